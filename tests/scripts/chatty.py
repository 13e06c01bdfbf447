"""Prints and logs from init() and run(), and collects extra fields (ours and through Azure's
ModelDataCollector): for the logs and data-collection tests."""

import logging
import sys

from azureml.monitoring import ModelDataCollector

from mlscore.scoring.collect import collect

logger = logging.getLogger("chatty")


def init():
    global inputs
    inputs = ModelDataCollector("chatty", designation="inputs", feature_names=["text"])
    print("init() says hello")


def run(data):
    print(f"run() got {data}")
    print("a warning on stderr", file=sys.stderr)
    logger.info("logged from run()")
    collect("length", len(data))
    inputs.collect([data])
    return {"echo": data}
