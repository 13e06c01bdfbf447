"""MLServer: a custom inference runtime, as MLServer's "Custom Inference Runtimes" guide writes one
(an MLModel with load() and predict(), tensors through NumpyCodec). peers.py writes the
model-settings.json beside it: the model's uri, and max_batch_size / max_batch_time for adaptive
batching; and settings.json: the ports, debug off (no access log line per request)."""

from __future__ import annotations

from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri

from onnx_session import open_session


class OnnxRuntime(MLModel):
    async def load(self) -> bool:
        self._session = open_session(await get_model_uri(self._settings))
        self._input = self._session.get_inputs()[0].name
        self._output = self._session.get_outputs()[0].name
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        rows = NumpyCodec.decode_input(payload.inputs[0])
        result = self._session.run([self._output], {self._input: rows})[0]
        return InferenceResponse(model_name=self.name,
                                 outputs=[NumpyCodec.encode_output(name=self._output, payload=result)])
