# run() sleeps for the number of milliseconds in the body ({"ms": N}) and counts its calls, so tests
# can hold slots for a known time and see whether run() was called at all. With {"until": PATH} too,
# it returns as soon as that file exists (N ms at most): a test holds a slot exactly as long as it
# needs, however slow the machine, and lets it go when it is done.
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
    _sleep(body.get("ms", 0) / 1000.0, body.get("until"))
    return {"slept_ms": body.get("ms", 0), "pid": os.getpid()}


def _sleep(seconds, until):
    if until is None:
        time.sleep(seconds)
        return
    deadline = time.monotonic() + seconds
    while not os.path.exists(until) and time.monotonic() < deadline:
        time.sleep(0.01)
