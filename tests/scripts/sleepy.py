# run() sleeps for the number of milliseconds in the body ({"ms": N}) and counts its calls, so tests
# can hold slots for a known time and see whether run() was called at all.
import json
import os
import time

calls_file = os.environ.get("SLEEPY_CALLS_FILE")


def init():
    pass


def run(data):
    body = json.loads(data or "{}")
    if calls_file:
        with open(calls_file, "a") as calls:
            calls.write(body.get("tag", "-") + "\n")
    time.sleep(body.get("ms", 0) / 1000.0)
    return {"slept_ms": body.get("ms", 0), "pid": os.getpid()}
