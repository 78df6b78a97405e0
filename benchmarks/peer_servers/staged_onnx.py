"""The model as a peer server's author would run it: its manifest's stage graphs in ONNX Runtime,
Pillow's decode, and the exit rule, with nothing from this project's server. Triton's Python
backend, LitServe and MLServer each wrap this one file (numpy, Pillow and onnxruntime only), so
every peer runs the same graphs, decode and rule, and `benchmarks/peers.py` checks their answers
against `python -m server`'s before timing anything.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image


def decode(data: bytes) -> np.ndarray:
    """32 x 32 x 3 uint8 RGB, resized bilinearly when it is another size."""
    image = Image.open(io.BytesIO(data)).convert("RGB")
    if image.size != (32, 32):
        image = image.resize((32, 32), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


class StagedOnnx:
    """One model directory (manifest.json + stage graphs), one ONNX Runtime thread per stage session."""

    def __init__(self, model_dir: str | Path, threads: int = 1):
        model_dir = Path(model_dir)
        manifest = json.loads((model_dir / "manifest.json").read_text())
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.sessions = [
            ort.InferenceSession(str(model_dir / s["file"]), options, providers=["CPUExecutionProvider"])
            for s in manifest["stages"]
        ]
        self.stages = manifest["stages"]
        k = len(self.stages)
        thresholds = manifest["thresholds"]["inference"]
        self.thresholds = np.asarray(
            thresholds if isinstance(thresholds, list) else [thresholds] * (k - 1), dtype=np.float32
        )
        inp = manifest["input"]
        self.scale = np.float32(inp["scale"])
        self.mean = np.asarray(inp["mean"], dtype=np.float32).reshape(1, 3, 1, 1)
        self.std = np.asarray(inp["std"], dtype=np.float32).reshape(1, 3, 1, 1)

    def classify(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """uint8 N x 32 x 32 x 3 -> (class id int64, confidence float32, 1-based exit int32)."""
        n = len(images)
        x = (images.astype(np.float32).transpose(0, 3, 1, 2) * self.scale - self.mean) / self.std
        class_id, confidence = np.zeros(n, np.int64), np.zeros(n, np.float32)
        exits = np.zeros(n, np.int32)
        active, features = np.arange(n), np.ascontiguousarray(x)
        for k, (stage, session) in enumerate(zip(self.stages, self.sessions)):
            names = [stage[key]["name"] for key in ("features", "confidence", "class_id") if stage.get(key)]
            outputs = dict(zip(names, session.run(names, {stage["input"]["name"]: features})))
            conf, cls = outputs[stage["confidence"]["name"]], outputs[stage["class_id"]["name"]]
            if k == len(self.stages) - 1:
                leave = np.ones(len(active), bool)
            else:  # the exit rule: confident enough at this exit, and threshold 1 means full depth
                leave = (conf >= self.thresholds[k]) & (self.thresholds[k] < 1.0)
            idx = active[leave]
            class_id[idx], confidence[idx], exits[idx] = cls[leave], conf[leave], k + 1
            if leave.all():
                break
            active = active[~leave]
            features = np.ascontiguousarray(outputs[stage["features"]["name"]][~leave])
        return class_id, confidence, exits
