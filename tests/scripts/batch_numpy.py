# A batched schema run() on numpy rows (@batched above inference-schema's decorators): a sum per row.
# CALLS records the rows of each call; a row starting 666 makes run() raise, one starting 777 makes it
# drop its last row of output.
import numpy as np
from inference_schema.parameter_types.numpy_parameter_type import NumpyParameterType
from inference_schema.schema_decorators import input_schema, output_schema

from mlscore import batched

CALLS = []


@batched
@input_schema("data", NumpyParameterType(np.array([[1.0, 2.0, 3.0]])))
@output_schema(NumpyParameterType(np.array([6.0])))
def run(data):
    CALLS.append(len(data))
    if (data[:, 0] == 666).any():
        raise RuntimeError("a bad row")
    sums = data.sum(axis=1)
    return sums[:-1] if (data[:, 0] == 777).any() else sums
