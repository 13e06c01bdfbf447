"""Leaks memory on request and tells who answered: run({"leak_mb": N}) keeps N more MiB (touched) for
the life of the process (with "below_mb": M, only while the process uses less than M MiB) and returns
its pid, resident memory and whether init() ran in it.
$LEAKY_INIT_S makes init() take that long, so that a replacement's start is seen to cost no request."""

import json
import os
import time

from mlscore.server.worker import rss_bytes

kept = []
initialized = False


def init():
    global initialized
    time.sleep(float(os.environ.get("LEAKY_INIT_S", "0")))
    initialized = True


def run(data):
    asked = json.loads(data)
    if rss_bytes() >> 20 < asked.get("below_mb", float("inf")):
        kept.append(b"\1" * (int(asked.get("leak_mb", 0)) << 20))
    return {"pid": os.getpid(), "rss_mb": rss_bytes() >> 20, "initialized": initialized}
