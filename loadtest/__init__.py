"""Load testing any scoring URL with locust: `mlscore loadtest URL`, and the locust users behind it
(`locustfile.py`, which `locust -f` also takes directly)."""

from pathlib import Path

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
