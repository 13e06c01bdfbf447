"""Locust users for any scoring URL, for those who run locust themselves:

    locust -f benchmarks/locustfile.py --host http://127.0.0.1:5001/score [--payload FILE] [--key KEY]

The users live in the package (`mlscore.loadtest.locustfile`), so `mlscore loadtest` works from an
installed wheel; importing them here also registers their command-line options and events."""

from mlscore.loadtest.locustfile import ScoringUser

__all__ = ["ScoringUser"]
