"""KServe's Python model server: a kserve.Model subclass started by ModelServer().start([model]),
as KServe's "custom predictor" docs write it, answering the V1 protocol
(POST /v1/models/<name>:predict, {"instances": rows}). ModelServer's settings come from its own
command-line flags (peers.py gives --http_port, --enable_grpc false, and, for no log line per
request, --enable_latency_logging false and --configure_logging false: uvicorn's access logger then
has no handler, which uvicorn takes as access log off). KServe has no batching of its own in this
server (its batcher is a sidecar of the Kubernetes deployment)."""

from __future__ import annotations

import os

import numpy as np
from kserve import Model, ModelServer

from onnx_session import open_session


class Mlp(Model):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.load()

    def load(self) -> bool:
        self.session = open_session(os.environ["PEER_MODEL"])
        self.input = self.session.get_inputs()[0].name
        self.ready = True
        return self.ready

    def predict(self, payload: dict, headers: dict | None = None, response_headers: dict | None = None) -> dict:
        rows = np.asarray(payload["instances"], dtype=np.float32)
        return {"predictions": self.session.run(None, {self.input: rows})[0].tolist()}


if __name__ == "__main__":
    ModelServer().start([Mlp(os.environ["PEER_MODEL_NAME"])])
