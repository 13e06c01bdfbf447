# Handwritten digits as 8x8 images ({"data": [[[8 pixels] x 8 rows], ...]}, intensities 0-16)
# classified by a small convolutional network in ONNX, on the device the server's settings name
# (--device, MLSCORE_DEVICE). Returns the predicted digit and its probability for each image.
import logging

import numpy as np
from azureml.core.model import Model
from inference_schema.parameter_types.numpy_parameter_type import NumpyParameterType
from inference_schema.parameter_types.standard_py_parameter_type import StandardPythonParameterType
from inference_schema.schema_decorators import input_schema, output_schema

from mlscore.accelerators import load

logger = logging.getLogger("cnn_onnx")


def init():
    global session
    session = load(Model.get_model_path("cnn.onnx"))
    logger.info("cnn.onnx runs on %s", session.device)


# One image of a zero from the training data, row by row.
input_sample = np.array([[
    [0, 0, 5, 13, 9, 1, 0, 0],
    [0, 0, 13, 15, 10, 15, 5, 0],
    [0, 3, 15, 2, 0, 11, 8, 0],
    [0, 4, 12, 0, 0, 8, 8, 0],
    [0, 5, 8, 0, 0, 9, 8, 0],
    [0, 4, 11, 0, 1, 12, 7, 0],
    [0, 2, 14, 5, 10, 12, 0, 0],
    [0, 0, 6, 13, 10, 0, 0, 0],
]], dtype=np.float32)
output_sample = {"digits": [0], "probabilities": [0.998]}


@input_schema("data", NumpyParameterType(input_sample))
@output_schema(StandardPythonParameterType(output_sample))
def run(data):
    # The network takes one channel per image: [N, 8, 8] -> [N, 1, 8, 8] (a view, no copy).
    probabilities = session.run({"image": data[:, np.newaxis]})["probabilities"]
    best = probabilities.argmax(axis=1)
    return {
        "digits": best.tolist(),
        "probabilities": probabilities[np.arange(len(best)), best].round(4).tolist(),
    }
