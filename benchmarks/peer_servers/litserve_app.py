"""The model in LitServe: `POST /classify` takes the image as a multipart `file` field, as this
project's server does; LitAPI batching joins uploads into one staged batch.

    python litserve_app.py MODEL_DIR PORT MAX_BATCH WORKERS
"""

import sys
from pathlib import Path

import litserve as ls
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from staged_onnx import StagedOnnx, decode


class StagedApi(ls.LitAPI):
    def __init__(self, model_dir: str, **kwargs):
        super().__init__(**kwargs)
        self.model_dir = model_dir

    def setup(self, device):
        self.model = StagedOnnx(self.model_dir)

    def decode_request(self, request):
        return decode(request["file"].file.read())

    def batch(self, inputs):
        return np.stack(inputs)

    def predict(self, images):
        class_id, confidence, exits = self.model.classify(images)
        return [
            {"class_id": int(c), "confidence": float(p), "exit": int(e)} for c, p, e in zip(class_id, confidence, exits)
        ]

    def unbatch(self, output):
        return output

    def encode_response(self, output):
        return output


if __name__ == "__main__":
    model_dir, port, max_batch, workers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    api = StagedApi(model_dir, max_batch_size=max_batch, batch_timeout=0.002, api_path="/classify")
    ls.LitServer(api, accelerator="cpu", workers_per_device=workers, timeout=30).run(
        host="127.0.0.1", port=port, generate_client_file=False
    )
