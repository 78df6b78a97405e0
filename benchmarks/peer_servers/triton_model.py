"""The model in Triton's Python backend (copied into the model repository as `1/model.py` by
`benchmarks/peers.py`): one request list from the dynamic batcher becomes one staged batch.
Inputs as this project's inference protocol takes them: `image` (BYTES, encoded images) or
`pixels` (UINT8 N x 32 x 32 x 3); outputs class_id, confidence, exit."""

import json
import os
import sys

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        params = json.loads(args["model_config"])["parameters"]
        sys.path.insert(0, params["PEER_SERVERS"]["string_value"])
        from staged_onnx import StagedOnnx, decode

        self.decode = decode
        self.model = StagedOnnx(params["MODEL_DIR"]["string_value"], threads=int(os.environ.get("ORT_THREADS", "1")))

    def _images(self, request) -> np.ndarray:
        pixels = pb_utils.get_input_tensor_by_name(request, "pixels")
        if pixels is not None:
            return pixels.as_numpy()
        encoded = pb_utils.get_input_tensor_by_name(request, "image").as_numpy().reshape(-1)
        return np.stack([self.decode(data) for data in encoded])

    def execute(self, requests):
        images = [self._images(r) for r in requests]
        class_id, confidence, exits = self.model.classify(np.concatenate(images))
        responses, start = [], 0
        for part in images:
            end = start + len(part)
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor("class_id", class_id[start:end]),
                        pb_utils.Tensor("confidence", confidence[start:end]),
                        pb_utils.Tensor("exit", exits[start:end]),
                    ]
                )
            )
            start = end
        return responses
