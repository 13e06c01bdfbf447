# A schema-decorated entry script whose input_schema names a parameter ("x") that run() does not take
# (run(data)). Azure starts it, and so does mlscore: ready without a warm-up, and every /score request
# is answered 500 {"message": "run() cannot be called: its input_schema names parameter(s) ['x'] ..."}
# with x-ms-run-function-failed: True.
import numpy as np
from inference_schema.parameter_types.numpy_parameter_type import NumpyParameterType
from inference_schema.schema_decorators import input_schema, output_schema


def init():
    pass


@input_schema("x", NumpyParameterType(np.array([[1.0, 2.0]])))
@output_schema(NumpyParameterType(np.array([3.0])))
def run(data):
    return np.asarray(data).sum(axis=1).tolist()
