"""Numeric comparison of a candidate model against its reference with onnxruntime.

Tolerance scales with the output's magnitude: an output passes when
``max|cand - ref| <= atol + rtol * max|ref|``. A fixed absolute tolerance is wrong for large
logits (onnxruntime disagrees with itself by 5.8e-4 on resnet50 logits of 1.3e3).
Non-float outputs must match exactly.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from onnxshrink.errors import VerificationError
from onnxshrink.runtime import create_session, run, run_batched

DEFAULT_RTOL = 1e-4
DEFAULT_ATOL = 1e-5
_MAX_CLASSES = 100_000


@dataclasses.dataclass
class OutputMetrics:
    """How one output of the candidate differs from the reference.

    ``max_rel`` is the max absolute error divided by the reference's max magnitude (the same
    scale the tolerance uses); ``top1_agreement`` is set for classifier-like outputs.
    """

    name: str
    max_abs: float
    max_rel: float
    cosine: float
    top1_agreement: float | None
    tolerance: float
    within_tolerance: bool
    note: str = ""


@dataclasses.dataclass
class VerificationReport:
    """The verdict and what it rests on; ``to_json`` is what goes into the report."""

    provider: str
    provider_reason: str
    inputs: str
    samples: int
    rtol: float
    atol: float
    outputs: list[OutputMetrics]
    accuracy_reference: float | None = None
    accuracy_candidate: float | None = None
    seconds: float = 0.0

    @property
    def within_tolerance(self) -> bool:
        return all(o.within_tolerance for o in self.outputs)

    @property
    def min_cosine(self) -> float:
        return min((o.cosine for o in self.outputs), default=1.0)

    @property
    def accuracy_drop(self) -> float | None:
        if self.accuracy_reference is None or self.accuracy_candidate is None:
            return None
        return self.accuracy_reference - self.accuracy_candidate

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["within_tolerance"] = self.within_tolerance
        data["min_cosine"] = self.min_cosine
        data["accuracy_drop"] = self.accuracy_drop
        return data

    def worst(self) -> OutputMetrics:
        failing = [o for o in self.outputs if not o.within_tolerance]
        pool = failing or self.outputs
        return max(pool, key=lambda o: o.max_rel)


def is_classifier_like(value: np.ndarray) -> bool:
    return np.issubdtype(value.dtype, np.floating) and value.ndim >= 2 and 2 <= value.shape[-1] <= _MAX_CLASSES


def compare_output(name: str, ref: Any, cand: Any, *, rtol: float, atol: float) -> OutputMetrics:
    """Metrics for one output pair; sequences and maps compare element by element."""
    if isinstance(ref, list) or isinstance(cand, list):
        if not isinstance(ref, list) or not isinstance(cand, list) or len(ref) != len(cand):
            return OutputMetrics(name, np.inf, np.inf, 0.0, None, 0.0, False, "sequence length differs")
        parts = [
            compare_output(f"{name}[{i}]", r, c, rtol=rtol, atol=atol)
            for i, (r, c) in enumerate(zip(ref, cand, strict=True))
        ]
        if not parts:
            return OutputMetrics(name, 0.0, 0.0, 1.0, None, 0.0, True, "empty sequence")
        worst = max(parts, key=lambda m: (not m.within_tolerance, m.max_rel))
        return dataclasses.replace(worst, name=name, within_tolerance=all(p.within_tolerance for p in parts))
    if isinstance(ref, dict) or ref is None or cand is None:
        same = bool(ref == cand) if isinstance(ref, dict) else ref is cand
        return OutputMetrics(name, 0.0 if same else np.inf, 0.0, 1.0 if same else 0.0, None, 0.0, same)
    ref = np.asarray(ref)
    cand = np.asarray(cand)
    if ref.shape != cand.shape:
        return OutputMetrics(name, np.inf, np.inf, 0.0, None, 0.0, False, f"shape {cand.shape} != {ref.shape}")
    if not (np.issubdtype(ref.dtype, np.floating) or np.issubdtype(ref.dtype, np.complexfloating)):
        equal = bool(np.array_equal(ref, cand))
        diff = 0.0
        if not equal and np.issubdtype(ref.dtype, np.number):
            diff = float(np.max(np.abs(ref.astype(np.float64) - cand.astype(np.float64))))
        elif not equal:
            diff = np.inf
        return OutputMetrics(name, diff, diff, 1.0 if equal else 0.0, None, 0.0, equal, "exact match required")
    r = ref.astype(np.float64)
    c = cand.astype(np.float64)
    finite = np.isfinite(r)
    nonfinite_ok = bool(np.array_equal(r[~finite], c[~finite], equal_nan=True))
    r_f, c_f = r[finite], c[finite]
    diff = np.abs(r_f - c_f)
    max_abs = float(np.max(diff)) if diff.size else 0.0
    if np.isnan(max_abs):
        max_abs = np.inf
    scale = float(np.max(np.abs(r_f))) if r_f.size else 0.0
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else np.inf)
    tolerance = atol + rtol * scale
    norm = float(np.linalg.norm(r_f) * np.linalg.norm(c_f))
    cosine = float(np.dot(r_f.ravel(), c_f.ravel()) / norm) if norm > 0 else float(max_abs == 0)
    top1 = None
    if is_classifier_like(ref) and ref.size:
        top1 = float(np.mean(np.argmax(ref, axis=-1) == np.argmax(cand, axis=-1)))
    within = nonfinite_ok and max_abs <= tolerance
    note = "" if nonfinite_ok else "NaN/Inf positions differ"
    return OutputMetrics(name, max_abs, max_rel, cosine, top1, tolerance, within, note)


def accuracy(outputs: Mapping[str, Any], labels: np.ndarray) -> float | None:
    """Top-1 accuracy of the first classifier-like output against ``labels``."""
    for value in outputs.values():
        if isinstance(value, np.ndarray) and is_classifier_like(value):
            predictions = np.argmax(value, axis=-1).reshape(-1)
            truth = np.asarray(labels).reshape(-1)
            if predictions.shape == truth.shape:
                return float(np.mean(predictions == truth))
    return None


def _sample_count(feed: Mapping[str, np.ndarray]) -> int:
    """Samples in a feed: the shared first-axis size when every input has one, else 1."""
    sizes = {len(v) if np.ndim(v) > 0 else -1 for v in feed.values()}
    return sizes.pop() if len(sizes) == 1 and -1 not in sizes else 1


def verify(
    reference: str | bytes,
    candidate: str | bytes,
    feed: Mapping[str, np.ndarray],
    *,
    provider: str = "auto",
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
    labels: np.ndarray | None = None,
    inputs_description: str = "generated",
    chunk: int | None = None,
) -> VerificationReport:
    """Runs both models on the same feed and provider and compares every output.

    Raises:
        RuntimeUnavailable: onnxruntime cannot run one of the models.
    """
    start = time.perf_counter()
    ref_session, choice = create_session(reference, provider)
    # The candidate runs on exactly the provider the reference ran on.
    cand_session, _ = create_session(candidate, "cuda" if choice.used.startswith("CUDA") else "cpu")
    if chunk is None:
        ref_out, cand_out = run(ref_session, feed), run(cand_session, feed)
    else:
        ref_out, cand_out = run_batched(ref_session, feed, chunk), run_batched(cand_session, feed, chunk)
    ref_names = [o.name for o in ref_session.get_outputs()]
    cand_names = [o.name for o in cand_session.get_outputs()]
    if ref_names != cand_names:
        raise VerificationError(f"the outputs changed: reference {ref_names}, candidate {cand_names}")
    metrics = [compare_output(n, ref_out[n], cand_out[n], rtol=rtol, atol=atol) for n in ref_names]
    report = VerificationReport(
        provider=choice.used,
        provider_reason=choice.reason,
        inputs=inputs_description,
        samples=_sample_count(feed),
        rtol=rtol,
        atol=atol,
        outputs=metrics,
    )
    if labels is not None:
        report.accuracy_reference = accuracy(ref_out, labels)
        report.accuracy_candidate = accuracy(cand_out, labels)
    report.seconds = time.perf_counter() - start
    return report
