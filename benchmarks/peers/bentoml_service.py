"""BentoML: a service class as BentoML's docs write one (@bentoml.service, a model loaded in
__init__, an @bentoml.api taking and returning numpy arrays). PEER_MAX_BATCH_SIZE > 1 makes the
API batchable (adaptive batching along the first dimension, up to that many rows, the docs'
max_latency_ms of 1000); the access log is off in the service's configuration. Served with
`bentoml serve bentoml_service:Mlp`."""

from __future__ import annotations

import os
from typing import Annotated

import bentoml
import numpy as np
from bentoml.validators import DType

from onnx_session import open_session

MAX_BATCH_SIZE = int(os.environ.get("PEER_MAX_BATCH_SIZE", "1"))
# BentoML refuses max_batch_size 1 even on an API that is not batchable: its defaults then.
BATCHING = {"batchable": True, "max_batch_size": MAX_BATCH_SIZE, "max_latency_ms": 1000} if MAX_BATCH_SIZE > 1 else {}


@bentoml.service(workers=1, logging={"access": {"enabled": False}})
class Mlp:
    def __init__(self) -> None:
        self.session = open_session(os.environ["PEER_MODEL"])
        self.input = self.session.get_inputs()[0].name

    @bentoml.api(**BATCHING)
    def predict(self, x: Annotated[np.ndarray, DType("float32")]) -> np.ndarray:
        return self.session.run(None, {self.input: x})[0]
