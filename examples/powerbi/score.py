# A table of mixed columns in (the Power BI style of the Azure documents): disease progression from
# the diabetes data, with `sex` as text and `age` as an integer, through a scikit-learn pipeline.
import joblib
import numpy as np
import pandas as pd
from azureml.contrib.services.aml_response import AMLResponse
from azureml.core.model import Model
from inference_schema.parameter_types.numpy_parameter_type import NumpyParameterType
from inference_schema.parameter_types.pandas_parameter_type import PandasParameterType
from inference_schema.schema_decorators import input_schema, output_schema


def init():
    global model
    model = joblib.load(Model.get_model_path("diabetes_table", version=None))


input_sample = pd.DataFrame(data=[{
    "age": 59,  # integer column
    "sex": "female",  # text column
    "bmi": 32.1,  # decimal columns
    "bp": 101.0,
    "s1": 157.0,
    "s2": 93.2,
    "s3": 38.0,
    "s4": 4.0,
    "s5": 4.8598,
    "s6": 87.0,
}])
output_sample = np.array([151.0])


@input_schema("data", PandasParameterType(input_sample))
@output_schema(NumpyParameterType(output_sample))
def run(data):
    try:
        return model.predict(data).round(3).tolist()
    except ValueError as error:
        # scikit-learn refuses input it cannot use (here: values so large that scaling overflows):
        # the client's to fix, so a 400 rather than a failed run().
        return AMLResponse({"message": f"The model cannot score this input: {error}"}, 400)
