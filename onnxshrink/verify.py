"""Numeric comparison of a candidate model against its reference with onnxruntime.

Tolerance scales with the output's magnitude: an output passes when
``max|cand - ref| <= atol + rtol * max|ref|``. A fixed absolute tolerance is wrong for large
logits (onnxruntime disagrees with itself by 5.8e-4 on resnet50 logits of 1.3e3).
Non-float outputs must match exactly.

:class:`Verifier` holds what every comparison of one run shares (reference, feed, provider,
tolerance); :meth:`VerificationReport.failure` applies the budget of exact and lossy pipelines.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxshrink.data.samples import Feed
from onnxshrink.errors import VerificationError
from onnxshrink.runtime import RuntimeUnavailable, create_session, model_source, run, run_batched

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
        """Whether every output is within ``atol + rtol * max|ref|``."""
        return all(o.within_tolerance for o in self.outputs)

    @property
    def min_cosine(self) -> float:
        """The lowest cosine similarity of any output (1.0 when there are none)."""
        return min((o.cosine for o in self.outputs), default=1.0)

    @property
    def accuracy_drop(self) -> float | None:
        """Top-1 accuracy lost by the candidate, or None when the feed has no labels."""
        if self.accuracy_reference is None or self.accuracy_candidate is None:
            return None
        return self.accuracy_reference - self.accuracy_candidate

    def to_json(self) -> dict[str, Any]:
        """Returns the report as plain JSON data, with the derived verdicts added."""
        data = dataclasses.asdict(self)
        data["within_tolerance"] = self.within_tolerance
        data["min_cosine"] = self.min_cosine
        data["accuracy_drop"] = self.accuracy_drop
        return data

    def worst(self) -> OutputMetrics:
        """The failing output with the largest relative error (any output when none fails)."""
        failing = [o for o in self.outputs if not o.within_tolerance]
        pool = failing or self.outputs
        return max(pool, key=lambda o: o.max_rel)

    def failure(self, *, exact: bool, max_drop: float | None, min_cosine: float | None) -> str | None:
        """Why the candidate fails its budget, or None when it passes.

        An exact pipeline must stay within tolerance; a lossy one fails only past the budget the
        user gave (``max_drop`` of accuracy, ``min_cosine`` of every output).
        """
        if exact and not self.within_tolerance:
            worst = self.worst()
            return (
                f"output '{worst.name}' differs by {worst.max_abs:.3g} (tolerance {worst.tolerance:.3g}, "
                f"rtol={self.rtol:g}, atol={self.atol:g}){' - ' + worst.note if worst.note else ''}"
            )
        if min_cosine is not None and self.min_cosine < min_cosine:
            return f"cosine similarity {self.min_cosine:.6f} is below --min-cosine {min_cosine}"
        drop = self.accuracy_drop
        if max_drop is not None and drop is not None and drop > max_drop:
            return f"accuracy dropped by {drop:.4f} (from {self.accuracy_reference:.4f}), past --max-drop {max_drop}"
        return None


def is_classifier_like(value: np.ndarray) -> bool:
    """Whether an output looks like class scores: floats shaped ``[..., classes]``, 2 to 100k classes."""
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


def verify(
    reference: str | bytes,
    candidate: str | bytes,
    feed: Feed,
    *,
    provider: str = "auto",
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
    chunk: int | None = None,
) -> VerificationReport:
    """Runs both models on the same feed and provider and compares every output.

    Args:
        reference: The model compared against, as onnxruntime opens it (a path or serialized bytes).
        candidate: The model compared, in the same form.
        feed: The inputs (and labels for accuracy).
        provider: ``auto``, ``cpu`` or ``cuda``; the candidate runs where the reference ran.
        rtol: Relative tolerance per output: ``|d| <= atol + rtol * max|ref|``.
        atol: Absolute tolerance per output (see ``rtol``).
        chunk: Samples per run when the feed is split into several runs, else None.

    Raises:
        RuntimeUnavailable: onnxruntime cannot run one of the models.
    """
    start = time.perf_counter()
    ref_session, choice = create_session(reference, provider)
    # The candidate runs on exactly the provider the reference ran on.
    cand_session, _ = create_session(candidate, "cuda" if choice.used.startswith("CUDA") else "cpu")
    arrays = feed.arrays
    if chunk is None:
        ref_out, cand_out = run(ref_session, arrays), run(cand_session, arrays)
    else:
        ref_out, cand_out = run_batched(ref_session, arrays, chunk), run_batched(cand_session, arrays, chunk)
    ref_names = [o.name for o in ref_session.get_outputs()]
    cand_names = [o.name for o in cand_session.get_outputs()]
    if ref_names != cand_names:
        raise VerificationError(f"the outputs changed: reference {ref_names}, candidate {cand_names}")
    metrics = [compare_output(n, ref_out[n], cand_out[n], rtol=rtol, atol=atol) for n in ref_names]
    report = VerificationReport(
        provider=choice.used,
        provider_reason=choice.reason,
        inputs=feed.description,
        samples=feed.samples,
        rtol=rtol,
        atol=atol,
        outputs=metrics,
    )
    if feed.labels is not None:
        report.accuracy_reference = accuracy(ref_out, feed.labels)
        report.accuracy_candidate = accuracy(cand_out, feed.labels)
    report.seconds = time.perf_counter() - start
    return report


class Verifier:
    """Compares candidates against the input model with one feed, provider and tolerance.

    Args:
        reference: The input model as onnxruntime opens it (``LoadedModel.source``); None when it
            lives only in memory with external weights, which cannot be compared.
        feed: What both models run on (:func:`onnxshrink.data.verification_feed`).
        provider: ``auto``, ``cpu`` or ``cuda``.
        rtol: Relative tolerance of exact pipelines.
        atol: Absolute tolerance of exact pipelines.
    """

    def __init__(self, reference: str | bytes | None, feed: Feed, provider: str, rtol: float, atol: float) -> None:
        self.reference = reference
        self.feed = feed
        self.provider = provider
        self.rtol = rtol
        self.atol = atol

    def compare(self, candidate: ir.Model) -> VerificationReport:
        """Runs the reference and ``candidate`` on the feed and compares every output.

        Raises:
            RuntimeUnavailable: onnxruntime cannot load or run one of the models, or the
                reference is not available.
        """
        if not self.reference:
            raise RuntimeUnavailable(
                "the input model lives only in memory with external weights; pass it as a path to verify"
            )
        chunk = self.feed.run_size(candidate)
        with model_source(candidate) as source:
            return verify(
                self.reference, source, self.feed, provider=self.provider, rtol=self.rtol, atol=self.atol, chunk=chunk
            )
