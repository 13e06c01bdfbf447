"""run() prints the number of lines the body asks for ({"lines": N}) and says how long that took
inside run(), next to the same loop writing to a StringIO (a calibration taken in the same process):
for the tests of what a worker's print costs and of lines delivered or counted as dropped."""

import io
import json
import time


def init():
    pass


def _print_lines(count, file=None):
    started = time.perf_counter()
    for index in range(count):
        print("burst line", index, file=file)
    return time.perf_counter() - started


def run(data):
    count = json.loads(data)["lines"]
    calibration_s = _print_lines(count, io.StringIO())
    print_s = _print_lines(count)
    return {"printed": count, "print_s": print_s, "calibration_s": calibration_s}
