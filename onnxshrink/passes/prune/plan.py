"""Pruning masks as data: which elements of a weight stay, computed before the graph is touched.

Every function here is pure numpy on arrays; ``True`` in a mask means the element is kept.
Ties are broken by position (a stable sort), so the same weights always give the same mask.
"""

from __future__ import annotations

import numpy as np

from onnxshrink.sparsity import kept_magnitude, magnitude, nm_mask

__all__ = [
    "apply_mask",
    "global_masks",
    "kept_magnitude",
    "layer_norm",
    "magnitude",
    "nm_mask",
    "smallest",
    "unstructured_mask",
]


def layer_norm(weight: np.ndarray, criterion: str) -> float:
    """The per-element size of a layer: mean ``|w|`` for ``l1``, root-mean-square for ``l2``."""
    score = magnitude(weight).astype(np.float64)
    if criterion == "l2":
        return float(np.sqrt(np.mean(score * score)))
    return float(np.mean(score))


def smallest(scores: np.ndarray, count: int) -> np.ndarray:
    """A flat mask that drops exactly ``count`` of the lowest scores (ties: the earlier element goes)."""
    keep = np.ones(scores.size, dtype=bool)
    if count > 0:
        keep[np.argsort(scores.ravel(), kind="stable")[:count]] = False
    return keep


def unstructured_mask(weight: np.ndarray, sparsity: float) -> np.ndarray:
    """Keeps all but the ``round(sparsity * size)`` smallest-magnitude elements of one layer."""
    count = round(sparsity * weight.size)
    return smallest(magnitude(weight), count).reshape(weight.shape)


def global_masks(weights: list[np.ndarray], sparsity: float, criterion: str) -> list[np.ndarray]:
    """One threshold over all layers, each layer's ``|w|`` divided by its :func:`layer_norm` first.

    The division makes layers of different scale comparable (a layer followed by a
    BatchNormalization may have any scale); an all-zero layer keeps its zeros and scores 0.
    """
    if not weights:
        return []
    scores = []
    for weight in weights:
        norm = layer_norm(weight, criterion)
        score = magnitude(weight)
        scores.append(score / norm if norm > 0 else score)
    flat = np.concatenate([s.ravel() for s in scores])
    keep = smallest(flat, round(sparsity * flat.size))
    bounds = np.cumsum([w.size for w in weights])[:-1]
    return [part.reshape(w.shape) for part, w in zip(np.split(keep, bounds), weights, strict=True)]


def apply_mask(weight: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """A new array of the weight's dtype with dropped elements set to zero."""
    return np.where(keep, weight, np.zeros((), dtype=weight.dtype)).astype(weight.dtype, copy=False)
