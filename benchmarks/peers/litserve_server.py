"""LitServe: a LitAPI as LitServe's docs write one (setup, decode_request, predict,
encode_response) served by LitServer on the CPU with one inference worker. A request carries rows
({"input": [[...], ...]}); with PEER_MAX_BATCH_SIZE > 1 the API batches up to that many requests,
waiting at most PEER_BATCH_TIMEOUT_MS, and its batch()/unbatch() hooks (with the request context,
as LitAPI.batch documents) join the requests' rows and give each request its own rows back.
uvicorn's access log is off."""

from __future__ import annotations

import os

import litserve as ls
import numpy as np

from onnx_session import open_session


class MlpAPI(ls.LitAPI):
    def setup(self, device: str) -> None:
        self.session = open_session(os.environ["PEER_MODEL"])
        self.input = self.session.get_inputs()[0].name

    def decode_request(self, request: dict) -> np.ndarray:
        return np.asarray(request["input"], dtype=np.float32)

    def batch(self, inputs: list[np.ndarray], context: list[dict]) -> np.ndarray:
        for rows, request in zip(inputs, context):
            request["rows"] = len(rows)
        return np.concatenate(inputs)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input: x})[0]

    def unbatch(self, output: np.ndarray, context: list[dict]) -> list[np.ndarray]:
        return np.split(output, np.cumsum([request["rows"] for request in context])[:-1])

    def encode_response(self, output: np.ndarray) -> dict:
        return {"output": output.tolist()}


if __name__ == "__main__":
    max_batch_size = int(os.environ.get("PEER_MAX_BATCH_SIZE", "1"))
    batch_timeout_s = float(os.environ.get("PEER_BATCH_TIMEOUT_MS", "0")) / 1000.0
    api = MlpAPI(max_batch_size=max(max_batch_size, 1), batch_timeout=batch_timeout_s)
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1)
    server.run(host="127.0.0.1", port=int(os.environ["PEER_PORT"]), generate_client_file=False, access_log=False)
