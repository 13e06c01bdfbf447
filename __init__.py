"""mlscore: a fast, overload-safe scoring server for Azure-ML-style entry scripts."""

__version__ = "0.1.0"
