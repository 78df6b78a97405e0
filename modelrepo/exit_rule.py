"""The exit rule (SPEC §4), the product's central rule and the one implementation of it.

An image leaves at the first early exit whose confidence (max softmax probability) reaches that
exit's threshold; otherwise the final exit answers. A threshold of 1 keeps every image to the
final exit, even one whose confidence is exactly 1.0 in float32: threshold 1 means "full depth".
Thresholds are compared in the confidence's own precision (float32 from ONNX Runtime), so 0.58
means the float32 number 0.58 wherever the rule runs.

The server applies `leaves` stage by stage; evaluation, calibration and the scripts apply
`first_confident_exit` to every exit's confidence at once; training's tensor version
(training.routing) is tested against this one.
"""

from __future__ import annotations

import numpy as np

FULL_DEPTH = 1.0  # a threshold at or above this keeps every image to the final exit


def leaves(confidence: np.ndarray, threshold) -> np.ndarray:
    """Which images leave at an early exit: confidence >= threshold, and never at threshold 1.
    `threshold` broadcasts against `confidence` (one number, or one per image)."""
    confidence = np.asarray(confidence)
    dtype = confidence.dtype if np.issubdtype(confidence.dtype, np.floating) else np.float64
    threshold = np.asarray(threshold, dtype=dtype)
    return (confidence >= threshold) & (threshold < FULL_DEPTH)


def early_exit_thresholds(threshold, num_exits: int) -> np.ndarray:
    """(K - 1) x 1 (or (K - 1) x N) thresholds of the early exits, from one number for every exit,
    one per early exit, or a (K - 1) x N array (one per early exit and image)."""
    t = np.asarray(threshold, dtype=np.float64)
    if t.ndim == 0:
        return np.full((num_exits - 1, 1), float(t))
    if len(t) != num_exits - 1:
        raise ValueError(f"{len(t)} thresholds for {num_exits - 1} early exits")
    return t[:, None] if t.ndim == 1 else t


def first_confident_exit(confidence: np.ndarray, threshold) -> np.ndarray:
    """0-based exit of each image. confidence: K x N (every exit's max softmax probability)."""
    confidence = np.asarray(confidence)
    k = confidence.shape[0]
    if k == 1:
        return np.zeros(confidence.shape[1], dtype=np.int64)
    ok = leaves(confidence[:-1], early_exit_thresholds(threshold, k))
    return np.where(ok.any(axis=0), ok.argmax(axis=0), k - 1)
