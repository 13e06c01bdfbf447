"""mlscore: a fast, overload-safe scoring server for Azure-ML-style entry scripts."""

from typing import Any

__version__ = "0.1.0"
__all__ = ["batched"]


def __getattr__(name: str) -> Any:
    """`from mlscore import batched` for entry scripts, imported on first use: the decorator's module
    brings numpy and pandas, which the CLI and the front process do without."""
    if name == "batched":
        from mlscore.scoring.batching import batched

        return batched
    raise AttributeError(f"module 'mlscore' has no attribute {name!r}")
