# run() fails on its own input sample, so the warm-up fails and the replica must not report ready.
import numpy as np
from inference_schema.parameter_types.numpy_parameter_type import NumpyParameterType
from inference_schema.schema_decorators import input_schema


@input_schema("data", NumpyParameterType(np.array([[0.0, 0.0]])))
def run(data):
    if not data.any():
        raise ValueError("all-zero input")
    return data.sum()
