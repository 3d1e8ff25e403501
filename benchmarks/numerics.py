"""Output checks shared by the benchmarks: onnxruntime reference runs and output comparisons.

Reference runs use onnxruntime's CPU provider with every graph optimization off, so a difference
is the tool's, not onnxruntime's. As a child process (models too large to hold twice in the
benchmark's own memory)::

    python benchmarks/numerics.py reference MODEL OUT.npz
    python benchmarks/numerics.py check OUT.npz CANDIDATE

``check`` compares with :func:`compare` at ``max|diff| <= 1e-4 * max(1, max|ref|)`` per output and
prints its result for :func:`harness.run_child`.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from harness import emit_result


def ort_outputs(path: str | Path | bytes, feed: Mapping[str, np.ndarray]) -> tuple[list[str], list[str], list[Any]]:
    """(input names, output names, outputs) of a CPU session with graph optimizations off.

    Feed entries the model does not take are left out.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    source = path if isinstance(path, bytes) else str(path)
    session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    ins = [i.name for i in session.get_inputs()]
    outs = [o.name for o in session.get_outputs()]
    return ins, outs, session.run(None, {k: feed[k] for k in ins if k in feed})


def compare(
    reference: Sequence[Any], candidate: Sequence[Any], *, atol: float, rtol: float, scale_floor: float = 0.0
) -> dict[str, Any]:
    """Max |difference| over all outputs and whether each is within ``atol + rtol * max(scale_floor, max|ref|)``.

    NaN and infinity must sit at the same places with the same values; integer outputs must be
    equal. Returns ``max_abs_diff``, ``ref_max`` (the largest float ``max|ref|``), ``ok`` and ``notes``.
    """
    worst, ref_max, ok, notes = 0.0, 0.0, True, []
    if len(reference) != len(candidate):
        return {
            "max_abs_diff": math.inf,
            "ref_max": 0.0,
            "ok": False,
            "notes": [f"{len(reference)} outputs -> {len(candidate)}"],
        }
    for index, (ref, got) in enumerate(zip(reference, candidate, strict=True)):
        ref, got = np.asarray(ref), np.asarray(got)
        if ref.shape != got.shape:
            notes.append(f"output {index}: shape {ref.shape} -> {got.shape}")
            worst, ok = math.inf, False
            continue
        if ref.dtype.kind in "fc":
            nan_ref, inf_ref = np.isnan(ref), np.isinf(ref)
            same_specials = np.array_equal(nan_ref, np.isnan(got)) and np.array_equal(inf_ref, np.isinf(got))
            if not same_specials or not np.array_equal(ref[inf_ref], got[inf_ref]):
                worst, ok = math.inf, False
                continue
            finite = ~(nan_ref | inf_ref)
            diff = float(np.max(np.abs(ref[finite].astype(np.float64) - got[finite].astype(np.float64)), initial=0.0))
            peak = float(np.max(np.abs(ref[finite]), initial=0.0))
            ref_max = max(ref_max, peak)
            ok = ok and diff <= atol + rtol * max(scale_floor, peak)
        else:
            diff = 0.0 if np.array_equal(ref, got) else math.inf
            ok = ok and diff == 0.0
        worst = max(worst, diff)
    return {"max_abs_diff": worst, "ref_max": ref_max, "ok": ok, "notes": notes}


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two arrays, flattened, in float64."""
    x, y = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(x @ y / max(np.linalg.norm(x) * np.linalg.norm(y), 1e-30))


def top1_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Share of rows whose argmax over the last axis agrees."""
    return float(np.mean(a.argmax(axis=-1) == b.argmax(axis=-1)))


def seeded_feed(path: str | Path) -> dict[str, np.ndarray]:
    """Seeded inputs (seed 1234) for the exported networks, one sample each.

    Dynamic dims become 1 (the first) and 16 (the others): images N=1; BERT N=1, S=16 with ids in
    [0, 1000), a mask of ones and token types of zeros; any other float input is N(0, 1).

    Raises:
        ValueError: An input that is neither a BERT input nor float32.
    """
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    inits = {t.name for t in proto.graph.initializer}
    rng = np.random.default_rng(1234)
    feed = {}
    for value in proto.graph.input:
        if value.name in inits:
            continue
        tensor = value.type.tensor_type
        # Dynamic dims (symbolic, absent, or paddle's -1): batch 1, an image's height and width 64
        # (enough for 32x downsampling), any other 16.
        image = len(tensor.shape.dim) == 4 and tensor.elem_type == onnx.TensorProto.FLOAT
        shape = [
            dim.dim_value if dim.dim_value > 0 else 1 if axis == 0 else 64 if image and axis >= 2 else 16
            for axis, dim in enumerate(tensor.shape.dim)
        ]
        if value.name == "input_ids":
            feed[value.name] = rng.integers(0, 1000, size=shape, dtype=np.int64)
        elif value.name == "attention_mask":
            feed[value.name] = np.ones(shape, dtype=np.int64)
        elif value.name == "token_type_ids":
            feed[value.name] = np.zeros(shape, dtype=np.int64)
        elif tensor.elem_type == onnx.TensorProto.FLOAT:
            feed[value.name] = rng.standard_normal(shape).astype(np.float32)
        else:
            raise ValueError(f"no input recipe for {value.name} (elem_type {tensor.elem_type})")
    return feed


def _reference(model: str, npz: str) -> None:
    feed = seeded_feed(model)
    ins, outs, got = ort_outputs(model, feed)
    arrays = {f"in:{k}": v for k, v in feed.items()}
    arrays.update({f"out:{i}:{name}": v for i, (name, v) in enumerate(zip(outs, got, strict=True))})
    np.savez(npz, **arrays)
    emit_result({"inputs": ins, "outputs": outs})


def _check(npz: str, candidate: str) -> None:
    data = np.load(npz)
    feed = {k[3:]: data[k] for k in data.files if k.startswith("in:")}
    ref_keys = sorted((k for k in data.files if k.startswith("out:")), key=lambda k: int(k.split(":")[1]))
    ref_names = [k.split(":", 2)[2] for k in ref_keys]
    ins, outs, got = ort_outputs(candidate, feed)
    result = compare([data[k] for k in ref_keys], got, atol=0.0, rtol=1e-4, scale_floor=1.0)
    if sorted(ins) != sorted(feed) or outs != ref_names:
        result["ok"] = False
        result["notes"].append(
            f"signature changed: inputs {sorted(feed)} -> {sorted(ins)}, outputs {ref_names} -> {outs}"
        )
    emit_result(result)


if __name__ == "__main__":
    kind, *rest = sys.argv[1:]
    if kind == "reference":
        _reference(rest[0], rest[1])
    elif kind == "check":
        _check(rest[0], rest[1])
    else:
        raise SystemExit(f"unknown command {kind!r}; valid: reference, check")
