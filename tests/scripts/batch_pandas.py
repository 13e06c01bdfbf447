# A batched schema run() on pandas rows: a frame with the sum of each row.
import pandas as pd
from inference_schema.parameter_types.pandas_parameter_type import PandasParameterType
from inference_schema.schema_decorators import input_schema

from mlscore import batched

CALLS = []


@batched
@input_schema("table", PandasParameterType(pd.DataFrame({"a": [1.0], "b": [2.0]})))
def run(table):
    CALLS.append(len(table))
    return pd.DataFrame({"total": table["a"] + table["b"]})
