# A schema-decorated script for the black-box HTTP contract tests: a sum per row, a failing run()
# when the first value is 666, and a result JSON cannot hold when it is 777.
import numpy as np
from inference_schema.parameter_types.numpy_parameter_type import NumpyParameterType
from inference_schema.schema_decorators import input_schema, output_schema


def init():
    pass


@input_schema("data", NumpyParameterType(np.array([[1.0, 2.0, 3.0]])))
@output_schema(NumpyParameterType(np.array([6.0])))
def run(data):
    if data[0, 0] == 666:
        raise RuntimeError("secret internal detail")
    if data[0, 0] == 777:
        return object()
    return data.sum(axis=1)
