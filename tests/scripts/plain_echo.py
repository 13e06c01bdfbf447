# An undecorated run(data): receives the body as a str.
calls = {"init": 0}


def init():
    calls["init"] += 1


def run(data):
    return {"received": data, "type": type(data).__name__, "init_calls": calls["init"]}
