# Results of many types, chosen by the body, to pin how they are encoded.
import numpy as np
import pandas as pd


def run(data):
    kind = data.strip()
    if kind == "ndarray":
        return np.arange(6, dtype=np.int32).reshape(2, 3)
    if kind == "float16":
        return np.array([0.5, 1.5], dtype=np.float16)
    if kind == "scalar":
        return {"int": np.int64(7), "float": np.float32(0.25), "bool": np.bool_(True)}
    if kind == "dataframe":
        return pd.DataFrame({"a": [1, 2], "b": ["x", "y"]})
    if kind == "series":
        return pd.Series([1.5, 2.5])
    if kind == "nan":
        return [float("nan"), 1.0]
    if kind == "string":
        return "plain text result"
    if kind == "none":
        return None
    if kind == "noncontiguous":
        return np.arange(12).reshape(3, 4)[:, ::2]
    return {"unknown": kind}
