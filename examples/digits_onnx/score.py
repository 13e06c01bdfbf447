# Handwritten digits (8x8 images, 64 pixel intensities 0-16) classified by a scikit-learn MLP
# converted to ONNX, on the device the server's settings name (--device, MLSCORE_DEVICE): the CPU,
# the GPU or an OpenCL device. Returns the predicted digit and its probability for each image.
import logging

import numpy as np
from azureml.core.model import Model
from inference_schema.parameter_types.numpy_parameter_type import NumpyParameterType
from inference_schema.parameter_types.standard_py_parameter_type import StandardPythonParameterType
from inference_schema.schema_decorators import input_schema, output_schema

from mlscore.accelerators import load

logger = logging.getLogger("digits_onnx")


def init():
    global session
    session = load(Model.get_model_path("digits_mlp.onnx"))
    logger.info("digits_mlp.onnx runs on %s", session.device)


# One image of a zero from the training data.
input_sample = np.array([[
    0, 0, 5, 13, 9, 1, 0, 0, 0, 0, 13, 15, 10, 15, 5, 0, 0, 3, 15, 2, 0, 11, 8, 0, 0, 4, 12, 0,
    0, 8, 8, 0, 0, 5, 8, 0, 0, 9, 8, 0, 0, 4, 11, 0, 1, 12, 7, 0, 0, 2, 14, 5, 10, 12, 0, 0,
    0, 0, 6, 13, 10, 0, 0, 0,
]], dtype=np.float32)
output_sample = {"digits": [0], "probabilities": [0.998]}


@input_schema("data", NumpyParameterType(input_sample))
@output_schema(StandardPythonParameterType(output_sample))
def run(data):
    probabilities = session.run({"input": data})["probabilities"]
    best = probabilities.argmax(axis=1)
    return {
        "digits": best.tolist(),
        "probabilities": probabilities[np.arange(len(best)), best].round(4).tolist(),
    }
