# init() succeeds the first time and then fails until $FLAKY_INIT_STATE/init-may-succeed exists, so a
# worker replaced after run("die") killed it cannot start until the test allows it.
import os
from pathlib import Path

state = Path(os.environ["FLAKY_INIT_STATE"])


def init():
    first = state / "first-init-done"
    if first.exists() and not (state / "init-may-succeed").exists():
        raise RuntimeError("model store unreachable")
    first.touch()


def run(data):
    if data == "die":
        os._exit(13)
    return {"pid": os.getpid()}
