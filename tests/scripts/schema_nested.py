# Nested inference-schema types: a dict holding a numpy array and a pandas frame, a plain str
# parameter, and a parameter with a default.
import numpy as np
import pandas as pd
from inference_schema.parameter_types.numpy_parameter_type import NumpyParameterType
from inference_schema.parameter_types.pandas_parameter_type import PandasParameterType
from inference_schema.parameter_types.standard_py_parameter_type import StandardPythonParameterType
from inference_schema.schema_decorators import input_schema, output_schema

matrix = NumpyParameterType(np.array([[1, 2], [3, 4]], dtype=np.int64))
table = PandasParameterType(pd.DataFrame({"name": ["a"], "score": [0.5]}))
inputs = StandardPythonParameterType({"matrix": matrix, "table": table})


def init():
    pass


@input_schema("inputs", inputs)
@input_schema("label", StandardPythonParameterType("sample"))
@output_schema(StandardPythonParameterType({"label": "sample", "total": 10, "names": ["a"], "scale": 1.0}))
def run(inputs, label, scale=1.0):
    matrix, table = inputs["matrix"], inputs["table"]
    assert isinstance(matrix, np.ndarray) and isinstance(table, pd.DataFrame)
    return {"label": label, "total": int(matrix.sum()), "names": table["name"].tolist(), "scale": scale}
