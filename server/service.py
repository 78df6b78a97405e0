"""A served model: its staged ONNX model, its batcher and the metrics it reports.

Online exit agreement (shadow runs): a `shadow_rate` share of the images that leave before the
final exit keep their feature map; after their answer is sent, when no request is waiting, the
remaining stages run on them and `elf_exit_agreement_total{exit, agree}` counts whether the
early class equals the final exit's. Shadow work never delays an answer by more than one small
chunk, and is dropped (`elf_shadow_dropped_total`) when requests are waiting or its queue is full.
"""

from __future__ import annotations

import collections
import hashlib
import threading
from dataclasses import dataclass

import numpy as np

from modelrepo import early_exit_thresholds

from . import metrics as m
from .batcher import Batcher
from .config import Settings
from .engine import ShadowJob, StagedModel

SHADOW_CHUNK = 64  # images per background stage run: bounds how long a new request can wait


@dataclass(frozen=True)
class ImageResult:
    class_id: int
    confidence: float
    exit: int


class ModelService:
    def __init__(self, model: StagedModel, settings: Settings, on_batch=None):
        self.model = model
        man = model.manifest
        self.name = model.dir.name
        # The model's version: its manifest's SHA-256, 12 hex digits (the manifest pins every stage
        # graph's hash, so a different model is a different version).
        self.version = hashlib.sha256((model.dir / "manifest.json").read_bytes()).hexdigest()[:12]
        self.class_names = man.class_names
        self.exits_total = man.num_exits
        self.default_threshold = man.thresholds.inference  # one number, or one per early exit
        self._default_per_exit = self._spread(self.default_threshold)  # what most requests ask for
        self._cumulative = np.array([s.cumulative_macs for s in man.stages], dtype=np.float64)
        self.batcher = Batcher(
            self._run_batch,
            settings.batch_size,
            settings.batch_wait_ms / 1000,
            settings.max_queue,
            on_depth=m.QUEUE_DEPTH.labels(self.name).set,
            idle_work=self._run_shadow_chunk,
            on_batch=on_batch,
            threads=settings.inference_threads,
        )
        self.shadow_rate, self.shadow_capacity = settings.shadow_rate, settings.shadow_queue
        self._rng = np.random.default_rng()
        self._shadows: collections.deque[ShadowJob] = collections.deque()
        self._shadowed = 0  # images in self._shadows
        self._shadow_lock = threading.Lock()  # the worker thread and the event loop both touch them
        # Every label value declared now (dashboards see zeros, not gaps), and each exit's and stage's
        # metrics kept at hand: a batch reports each image, and looking them up again cost measurably.
        exits = [str(k) for k in range(1, self.exits_total + 1)]
        self._exits = [m.EXITS.labels(self.name, k) for k in exits]
        self._stage_latency = [m.STAGE_LATENCY.labels(self.name, k) for k in exits]
        self._stage_batch = [m.STAGE_BATCH.labels(self.name, k) for k in exits]
        self._confidence = [m.EXIT_CONFIDENCE.labels(self.name, k) for k in exits]
        self._depth = m.EXIT_DEPTH.labels(self.name)
        self._macs, self._macs_full = m.MACS.labels(self.name), m.MACS_FULL.labels(self.name)
        offline = man.metrics.agreement  # per early exit, at the default threshold, on the test set
        for k in range(1, self.exits_total):
            for agree in ("true", "false"):
                m.EXIT_AGREEMENT.labels(self.name, str(k), agree)
            level = settings.agreement_alert_level
            if level is None:
                known = k <= len(offline) and offline[k - 1] is not None
                level = max(0.0, offline[k - 1] - settings.agreement_alert_margin) if known else 0.9
            m.AGREEMENT_ALERT_LEVEL.labels(self.name, str(k)).set(level)
        m.SHADOW_DROPPED.labels(self.name)
        m.PROVIDER.labels(self.name, model.provider).set(1)
        m.MODEL_INFO.labels(
            self.name,
            man.variant,
            man.format_version,
            str(man.imbalance),
            str(self.exits_total),
            format_threshold(self.default_threshold),
        ).set(1)

    def _run_batch(self, images: np.ndarray, thresholds: np.ndarray) -> list[ImageResult]:
        """Worker thread: normalise the batch (once, off the event loop) and run the stages."""
        x = self.model.preprocess(images)
        shadow = self._rng.random(len(x)) < self.shadow_rate if self.shadow_rate > 0 else None
        result = self.model.run(x, thresholds.T, shadow)  # the batcher's N x (K - 1), per image
        if result.shadows:
            self._queue_shadows(result.shadows)
        for k, stage in enumerate(result.stages):
            self._stage_latency[k].observe(stage.seconds)
            self._stage_batch[k].observe(stage.batch_size)
        counts = np.bincount(result.exit, minlength=self.exits_total + 1)[1:]
        for k, count in enumerate(counts):
            if count:
                self._exits[k].inc(int(count))
        for e, conf in zip(result.exit.tolist(), result.confidence.tolist()):
            self._depth.observe(e)
            self._confidence[e - 1].observe(conf)
        self._macs.inc(float(self._cumulative[result.exit - 1].sum()))
        self._macs_full.inc(float(self._cumulative[-1] * len(x)))
        return [
            ImageResult(int(c), float(p), int(e)) for c, p, e in zip(result.class_id, result.confidence, result.exit)
        ]

    def _queue_shadows(self, jobs: list[ShadowJob]) -> None:
        """Keep shadow jobs for idle time, or drop them (counted) when requests wait or room is short."""
        busy = self.batcher.busy
        with self._shadow_lock:
            for job in jobs:
                if busy or self._shadowed + len(job.class_id) > self.shadow_capacity:
                    m.SHADOW_DROPPED.labels(self.name).inc(len(job.class_id))
                    continue
                self._shadows.append(job)
                self._shadowed += len(job.class_id)
        if self._shadowed:
            self.batcher.loop.call_soon_threadsafe(self.batcher.wake_idle_work)

    def _run_shadow_chunk(self) -> bool:
        """Worker thread, idle time: one chunk of shadow images through their remaining stages."""
        with self._shadow_lock:
            if not self._shadows:
                return False
            job = self._shadows.popleft()
            if len(job.class_id) > SHADOW_CHUNK:  # put the rest back in front
                rest = ShadowJob(job.exit, job.class_id[SHADOW_CHUNK:], job.features[SHADOW_CHUNK:])
                job = ShadowJob(job.exit, job.class_id[:SHADOW_CHUNK], job.features[:SHADOW_CHUNK])
                self._shadows.appendleft(rest)
            self._shadowed -= len(job.class_id)
        final = self.model.finish(job.features, job.exit)
        agree = int((final == job.class_id).sum())
        m.EXIT_AGREEMENT.labels(self.name, str(job.exit), "true").inc(agree)
        m.EXIT_AGREEMENT.labels(self.name, str(job.exit), "false").inc(len(final) - agree)
        with self._shadow_lock:
            return bool(self._shadows)

    def per_exit(self, threshold: float | list[float] | None) -> tuple[float, ...]:
        """The threshold at each early exit: the manifest's default when the request names none; a
        request's one number applies to every exit."""
        return self._default_per_exit if threshold is None else self._spread(threshold)

    def _spread(self, threshold: float | list[float]) -> tuple[float, ...]:
        return tuple(early_exit_thresholds(threshold, self.exits_total)[:, 0].tolist())

    async def classify(self, images: list[np.ndarray], threshold: float | list[float] | None) -> list[ImageResult]:
        return await self.batcher.submit(images, self.per_exit(threshold))


def format_threshold(threshold: float | list[float]) -> str:
    return f"{threshold:g}" if isinstance(threshold, (int, float)) else "/".join(f"{t:g}" for t in threshold)
