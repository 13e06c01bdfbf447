# init() and the warm-up run() (the first run(), with the input sample) each wait for a gate file in
# $SLOW_INIT_GATES, so a test can watch the server while either is still running, then let it go on.
import os
import time
from pathlib import Path

import numpy as np
from inference_schema.parameter_types.numpy_parameter_type import NumpyParameterType
from inference_schema.schema_decorators import input_schema

gates = Path(os.environ["SLOW_INIT_GATES"])


def _wait_for(name):
    deadline = time.monotonic() + 60
    while not (gates / name).exists() and time.monotonic() < deadline:
        time.sleep(0.01)


def init():
    (gates / "init-started").touch()
    _wait_for("init-may-finish")


@input_schema("data", NumpyParameterType(np.array([[1.0, 2.0]])))
def run(data):
    (gates / "run-started").touch()
    _wait_for("run-may-finish")
    return data.sum()
