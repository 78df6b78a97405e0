"""torch.compile for the network's forward (training and evaluation), the eager module as fallback.

Modes are torch.compile's: "default" (Inductor kernels), "reduce-overhead" (Inductor + CUDA graphs,
which removes the per-kernel launch cost that dominates a small ResNet-32 step on a GPU; on the CPU
it is the same as "default"), "max-autotune-no-cudagraphs". "off" trains eagerly.

Only the network is compiled: the losses and exit assignment stay eager, since Mixup's lambda
changes every step and would make Dynamo recompile. Shapes are static (dynamic=False): one graph
for the full batch, one for the epoch's last, smaller batch, one per mode (train / eval).
"""

from __future__ import annotations

import logging

import torch
import torch._dynamo.exc

log = logging.getLogger(__name__)

COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune-no-cudagraphs")
# Compilation failures (no C++ compiler, no Triton, an unsupported op): the run continues eagerly.
COMPILE_ERRORS = (torch._dynamo.exc.TorchDynamoException,)


def compile_network(model: torch.nn.Module, mode: str) -> torch.nn.Module:
    """The module to call for forward passes: `model` itself when mode is "off"."""
    if mode not in COMPILE_MODES:
        raise ValueError(f"unknown compile mode {mode!r}; expected one of {COMPILE_MODES}")
    if mode == "off":
        return model
    return torch.compile(model, mode=mode, dynamic=False)


def mark_step(mode: str, device: torch.device) -> None:
    """Tell CUDA-graph trees a new iteration begins, so the previous step's graph outputs may be
    overwritten (we never keep them past the step)."""
    if mode == "reduce-overhead" and device.type == "cuda":
        torch.compiler.cudagraph_mark_step_begin()
