"""A served model: its staged ONNX model, its batcher and the metrics it reports."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import metrics as m
from .batcher import Batcher
from .config import Settings
from .engine import StagedModel


@dataclass(frozen=True)
class ImageResult:
    class_id: int
    confidence: float
    exit: int


class ModelService:
    def __init__(self, model: StagedModel, settings: Settings):
        self.model = model
        man = model.manifest
        self.name = model.dir.name
        self.class_names = man.class_names
        self.exits_total = man.num_exits
        self.default_threshold = man.thresholds.inference  # one number, or one per early exit
        self._cumulative = np.array([s.cumulative_macs for s in man.stages], dtype=np.float64)
        self.batcher = Batcher(self._run_batch, settings.batch_size, settings.batch_wait_ms / 1000,
                               settings.max_queue, on_depth=m.QUEUE_DEPTH.labels(self.name).set)
        # Pre-declare every label value so dashboards see zeros, not gaps.
        for k in range(1, self.exits_total + 1):
            m.EXITS.labels(self.name, str(k))
            m.STAGE_LATENCY.labels(self.name, str(k))
            m.STAGE_BATCH.labels(self.name, str(k))
        m.MACS.labels(self.name)
        m.MACS_FULL.labels(self.name)
        m.PROVIDER.labels(self.name, model.provider).set(1)
        m.MODEL_INFO.labels(self.name, man.variant, man.format_version, str(man.imbalance),
                            str(self.exits_total), format_threshold(self.default_threshold)).set(1)

    def _run_batch(self, x: np.ndarray, thresholds: np.ndarray) -> list[ImageResult]:
        result = self.model.run(x, thresholds)
        for k, stage in enumerate(result.stages, start=1):
            m.STAGE_LATENCY.labels(self.name, str(k)).observe(stage.seconds)
            m.STAGE_BATCH.labels(self.name, str(k)).observe(stage.batch_size)
        counts = np.bincount(result.exit, minlength=self.exits_total + 1)[1:]
        for k, count in enumerate(counts, start=1):
            if count:
                m.EXITS.labels(self.name, str(k)).inc(int(count))
        for e, conf in zip(result.exit, result.confidence):
            m.EXIT_DEPTH.labels(self.name).observe(int(e))
            m.EXIT_CONFIDENCE.labels(self.name, str(int(e))).observe(float(conf))
        m.MACS.labels(self.name).inc(float(self._cumulative[result.exit - 1].sum()))
        m.MACS_FULL.labels(self.name).inc(float(self._cumulative[-1] * len(x)))
        return [ImageResult(int(c), float(p), int(e))
                for c, p, e in zip(result.class_id, result.confidence, result.exit)]

    def per_exit(self, threshold: float | list[float]) -> tuple[float, ...]:
        """The threshold at each early exit: a request's one number applies to every exit."""
        if isinstance(threshold, (int, float)):
            return (float(threshold),) * (self.exits_total - 1)
        return tuple(threshold)

    async def classify(self, images: list[np.ndarray], threshold: float | list[float]) -> list[ImageResult]:
        xs = list(self.model.preprocess(np.stack(images)))
        return await self.batcher.submit(xs, self.per_exit(threshold))


def format_threshold(threshold: float | list[float]) -> str:
    return f"{threshold:g}" if isinstance(threshold, (int, float)) else "/".join(f"{t:g}" for t in threshold)
