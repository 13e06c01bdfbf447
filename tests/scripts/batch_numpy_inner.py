# batch_numpy.py's run() with @batched below inference-schema's decorators, an optional second array
# (a weight per row) and a shared parameter: requests join a call only when their `scale` is the same.
import numpy as np
from inference_schema.parameter_types.numpy_parameter_type import NumpyParameterType
from inference_schema.parameter_types.standard_py_parameter_type import StandardPythonParameterType
from inference_schema.schema_decorators import input_schema

from mlscore import batched

CALLS = []


@input_schema("data", NumpyParameterType(np.array([[1.0, 2.0, 3.0]])))
@input_schema("weights", NumpyParameterType(np.array([1.0])), optional=True)
@input_schema("scale", StandardPythonParameterType(1), optional=True)
@batched
def run(data, weights=None, scale=1):
    CALLS.append((len(data), scale))
    sums = data.sum(axis=1) * scale
    return sums if weights is None else sums * weights
