"""ONNX Runtime sessions per stage and the staged early-exit run.

Stage 1 runs on the whole batch; images whose exit confidence reaches their threshold leave,
the rest go on to the next stage with their feature maps. Later stages never see an image that
has left. The last stage answers for every image still there.

Tensors are fed and read by the names the manifest gives. With the CUDA provider the stages run
through IO binding: each stage's feature map and probabilities stay on the GPU, only confidence
and class come back, and when no image leaves at an exit the feature map goes on to the next
stage without a round trip through host memory (when some leave, the survivors are gathered on
the host).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from modelrepo import Manifest, ManifestError, early_exit_thresholds, leaves, load_manifest

from .config import cgroup_cpu_limit
from .images import SIZE, normalize

log = logging.getLogger(__name__)
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def choose_providers(wanted: str) -> list[str]:
    """Ask ONNX Runtime for CUDA only when it has it, so a CPU machine logs no errors."""
    available = ort.get_available_providers()
    if wanted in ("auto", "cuda") and CUDA in available:
        return [CUDA, CPU]
    return [CPU]


def check_input(manifest: Manifest, model_dir: Path) -> None:
    """Refuse a model whose input the server cannot make: uploads are decoded to SIZE RGB (images.py),
    so a manifest asking for another size would validate and then fail inside ONNX Runtime."""
    inp, wanted = manifest.input, [3, SIZE[1], SIZE[0]]
    given = [inp.channels, inp.height, inp.width]
    if given != wanted or manifest.stages[0].input.shape[1:] != wanted:
        raise ManifestError(
            f"{model_dir / 'manifest.json'}: input {given[1]}x{given[2]} with {given[0]} "
            f"channels (stage 1 takes {manifest.stages[0].input.shape}); this server feeds "
            f"every model {SIZE[1]}x{SIZE[0]} RGB images"
        )


@dataclass
class StageStats:
    seconds: float
    batch_size: int


@dataclass
class ShadowJob:
    """Images that left at an early exit, kept to run the remaining stages later (online agreement)."""

    exit: int  # 1-based exit they left at
    class_id: np.ndarray  # the class they were answered with
    features: np.ndarray  # the feature map after stage `exit`, the next stage's input


@dataclass
class StagedResult:
    class_id: np.ndarray  # N, int64
    confidence: np.ndarray  # N, float32
    exit: np.ndarray  # N, 1-based exit level
    stages: list[StageStats] = field(default_factory=list)
    shadows: list[ShadowJob] = field(default_factory=list)


class StagedModel:
    def __init__(
        self,
        model_dir: Path,
        wanted_provider: str = "auto",
        intra_op_threads: int = 0,
        io_binding: bool | None = None,
        spinning: bool = False,
    ):
        self.dir = Path(model_dir)
        self.manifest: Manifest = load_manifest(self.dir)
        check_input(self.manifest, self.dir)
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only; provider fallbacks are reported by us
        intra_op_threads = intra_op_threads or cgroup_cpu_limit() or 0
        if intra_op_threads:
            options.intra_op_num_threads = intra_op_threads
        if not spinning:  # idle ORT threads would spin on the cores the event loop and decoders need
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = choose_providers(wanted_provider)
        self.sessions = []
        for stage in self.manifest.stages:
            try:
                session = ort.InferenceSession(str(self.dir / stage.file), options, providers=providers)
            except Exception as exc:  # ORT raises its own exception types for invalid graphs
                raise ManifestError(f"{self.dir / stage.file}: ONNX Runtime cannot load it: {exc}") from None
            self.sessions.append(session)
        self.provider = self.sessions[0].get_providers()[0]
        # IO binding pays where tensors live off the host; io_binding=True forces it (tests on a CPU).
        self.io_binding = self.provider == CUDA if io_binding is None else io_binding
        self.device = "cuda" if self.provider == CUDA else "cpu"
        self.wanted_provider = wanted_provider
        inp = self.manifest.input
        self._norm = (inp.mean, inp.std, inp.scale)

    @property
    def provider_ok(self) -> bool:
        return self.wanted_provider != "cuda" or self.provider == CUDA

    def preprocess(self, images: np.ndarray) -> np.ndarray:
        return normalize(images, *self._norm)

    def run(self, x: np.ndarray, threshold, shadow: np.ndarray | None = None) -> StagedResult:
        """x: normalised N x 3 x 32 x 32 float32; threshold: the early exits' as the exit rule takes
        them (exit_rule.early_exit_thresholds): one number, one per early exit, or (K - 1) x N, one
        per early exit and image. shadow: N bools, images whose feature maps are kept (as
        ShadowJobs) when they leave early."""
        n = len(x)
        thresholds = np.broadcast_to(early_exit_thresholds(threshold, len(self.sessions)), (len(self.sessions) - 1, n))
        class_id = np.zeros(n, dtype=np.int64)
        confidence = np.zeros(n, dtype=np.float32)
        exits = np.zeros(n, dtype=np.int64)
        active = np.arange(n)
        features = x
        stats, result_shadows = [], []
        last = len(self.sessions) - 1
        for k in range(len(self.sessions)):
            t0 = time.perf_counter()
            feats, conf, cls = self._run_stage(k, features)
            stats.append(StageStats(time.perf_counter() - t0, len(active)))
            if k == last:
                leave = np.ones(len(active), dtype=bool)
            else:
                leave = leaves(conf, thresholds[k, active])
            idx = active[leave]
            class_id[idx], confidence[idx], exits[idx] = cls[leave], conf[leave], k + 1
            if k == last or leave.all():
                if shadow is not None and k != last:
                    self._keep_shadows(result_shadows, k, leave & shadow[active], cls, feats)
                break
            if not leave.any():
                features = feats  # everyone goes on: a device-resident feature map stays there
                continue
            feats = self._host(feats)
            if shadow is not None:
                self._keep_shadows(result_shadows, k, leave & shadow[active], cls, feats)
            active, features = active[~leave], np.ascontiguousarray(feats[~leave])
        return StagedResult(class_id, confidence, exits, stats, result_shadows)

    def _keep_shadows(self, jobs: list, k: int, kept: np.ndarray, cls: np.ndarray, feats) -> None:
        if kept.any():
            jobs.append(ShadowJob(k + 1, cls[kept], np.ascontiguousarray(self._host(feats)[kept])))

    @staticmethod
    def _host(feats) -> np.ndarray:
        return feats.numpy() if isinstance(feats, ort.OrtValue) else feats

    def _run_stage(self, k: int, features):
        """(feature map or None, confidence, class) of stage k; the feature map is an OrtValue on
        the device under IO binding, else a host array."""
        spec, session = self.manifest.stages[k], self.sessions[k]
        if not self.io_binding:
            names = [t.name for t in (spec.features, spec.confidence, spec.class_id) if t is not None]
            outputs = dict(zip(names, session.run(names, {spec.input.name: self._host(features)})))
            feats = outputs.get(spec.features.name) if spec.features is not None else None
            return feats, outputs[spec.confidence.name], outputs[spec.class_id.name]
        binding = session.io_binding()
        if isinstance(features, ort.OrtValue):
            binding.bind_ortvalue_input(spec.input.name, features)
        else:
            binding.bind_cpu_input(spec.input.name, features)
        # The probabilities stay where they are made (never read on the host); get_outputs()
        # answers in this binding order.
        bound = [
            (t.name, device)
            for t, device in (
                (spec.features, self.device),
                (spec.probabilities, self.device),
                (spec.confidence, "cpu"),
                (spec.class_id, "cpu"),
            )
            if t is not None
        ]
        for name, device in bound:
            binding.bind_output(name, device)
        session.run_with_iobinding(binding)
        outputs = dict(zip([name for name, _ in bound], binding.get_outputs()))
        feats = outputs[spec.features.name] if spec.features is not None else None
        return feats, outputs[spec.confidence.name].numpy(), outputs[spec.class_id.name].numpy()

    def finish(self, features: np.ndarray, after_exit: int) -> np.ndarray:
        """The final exit's class for feature maps taken after exit `after_exit` (1-based): the
        remaining stages, every image to the end."""
        for k in range(after_exit, len(self.sessions)):
            features, _, cls = self._run_stage(k, features)
        return cls

    def warm_up(self, batch_sizes: tuple[int, ...] = (1,)) -> list[tuple[int, float]]:
        """Run every stage at each batch size (ONNX Runtime allocates on its first runs), then time a
        second run: (images, seconds) at full depth, the first estimate of what a batch costs."""
        timings = []
        for n in batch_sizes:
            x = np.zeros((n, 3, 32, 32), dtype=np.float32)
            self.run(x, 1.0)  # threshold 1: every stage runs
            t0 = time.perf_counter()
            self.run(x, 1.0)
            timings.append((n, time.perf_counter() - t0))
        return timings


def load_repository(
    repository: Path, default_model: str, wanted_provider: str, intra_op_threads: int = 0, spinning: bool = False
) -> dict[str, StagedModel]:
    """Every model directory under the repository (one with a manifest.json); the default must be there."""
    repository = Path(repository)
    if not repository.is_dir():
        raise ManifestError(f"{repository}: model repository not found (a folder of model directories)")
    models = {}
    for child in sorted(p for p in repository.iterdir() if p.is_dir()):
        if (child / "manifest.json").exists() or child.name == default_model:
            model = StagedModel(child, wanted_provider, intra_op_threads, spinning=spinning)
            models[child.name] = model
            log.info(
                "loaded model %s (%s, %d stages) on %s",
                child.name,
                model.manifest.variant,
                model.manifest.num_exits,
                model.provider,
            )
    if default_model not in models:
        raise ManifestError(f"{repository / default_model}: default model not found")
    return models
