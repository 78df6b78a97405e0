"""The model as an MLServer custom runtime (`implementation: mlserver_runtime.StagedRuntime`, the
model directory as `parameters.uri`); MLServer's adaptive batching joins requests along the first
axis. Inputs: `image` (BYTES, encoded images; base64 in JSON with `content_type: base64`) or
`pixels` (UINT8 N x 32 x 32 x 3); outputs class_id, confidence, exit."""

import numpy as np
from mlserver import MLModel
from mlserver.codecs import Base64Codec, NumpyCodec
from mlserver.errors import InferenceError
from mlserver.types import InferenceRequest, InferenceResponse
from staged_onnx import StagedOnnx, decode


class StagedRuntime(MLModel):
    async def load(self) -> bool:
        self.model = StagedOnnx(self.settings.parameters.uri)
        return True

    def _images(self, payload: InferenceRequest) -> np.ndarray:
        for inp in payload.inputs:
            if inp.name == "pixels":
                return NumpyCodec.decode_input(inp).astype(np.uint8, copy=False)
            if inp.name == "image":
                base64 = inp.parameters is not None and inp.parameters.content_type == Base64Codec.ContentType
                encoded = Base64Codec.decode_input(inp) if base64 else inp.data.root
                return np.stack(
                    [decode(data if isinstance(data, bytes) else data.encode("latin-1")) for data in encoded]
                )
        raise InferenceError("one input, image or pixels, is required")

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        class_id, confidence, exits = self.model.classify(self._images(payload))
        return InferenceResponse(
            model_name=self.name,
            outputs=[
                NumpyCodec.encode_output("class_id", class_id),
                NumpyCodec.encode_output("confidence", confidence),
                NumpyCodec.encode_output("exit", exits),
            ],
        )
