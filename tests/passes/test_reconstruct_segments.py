"""``reconstruct``'s staged data passes run segments of the model: the same refits as whole-model runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import DIGITS, DIGITS_CALIB, initializer_arrays, parse_model, run_pass

import onnxshrink
from onnxshrink.passes.reconstruct import segments

# Four stages. h1 crosses two cuts, read only inside the If's body (an outer-scope value); the
# graph input x is read again by the last stage; a function node sits inside a segment.
STAGES = """<ir_version: 8, opset_import: ["" : 17, "local" : 1]>
g (float[N, 12] x) => (float[N, 6] y) {
    h1 = MatMul(x, W1)
    a1 = Relu(h1)
    h2 = MatMul(a1, W2)
    a2 = local.Act(h2)
    flag = Constant <value = bool {1}> ()
    r = If(flag) <
        then_branch = then_graph () => (float[N, 12] o) { o = Add(a2, h1) },
        else_branch = else_graph () => (float[N, 12] e) { e = Identity(a2) }
    >
    h3 = MatMul(r, W3)
    s = Sigmoid(h3)
    m = Mul(s, x)
    y = MatMul(m, W4)
}
<domain: "local", opset_import: ["" : 17]>
Act (a) => (b) {
    b = Tanh(a)
}
"""
# A sequence made in the first segment and read by the second: not a tensor to keep between passes.
SEQUENCE = """<ir_version: 8, opset_import: ["" : 17]>
g (float[N, 12] x) => (float[N, 12] y) {
    h1 = MatMul(x, W1)
    seq = SequenceConstruct(h1)
    zero = Constant <value = int64 {0}> ()
    a1 = SequenceAt(seq, zero)
    h2 = MatMul(a1, W2)
    b = SequenceAt(seq, zero)
    c = Add(h2, b)
    y = MatMul(c, W3)
}
"""
WEIGHTS = {"W1": (12, 12), "W2": (12, 12), "W3": (12, 12), "W4": (12, 6)}


def _pair(text: str, names: tuple[str, ...]) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """The graph with random weights (teacher), and with half of each weight zeroed (student)."""
    rng = np.random.default_rng(0)
    dense = {n: (rng.standard_normal(WEIGHTS[n]) / 3).astype(np.float32) for n in names}
    pruned = {n: (w * (rng.random(w.shape) < 0.5)).astype(np.float32) for n, w in dense.items()}
    return parse_model(text, initializers=dense), parse_model(text, initializers=pruned)


def _calibration(samples: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    low_rank = rng.standard_normal((samples, 6)) @ rng.standard_normal((6, 12))
    return {"x": (low_rank + 0.1 * rng.standard_normal((samples, 12))).astype(np.float32)}


def _both_ways(
    monkeypatch: pytest.MonkeyPatch, model: onnx.ModelProto, teacher: onnx.ModelProto, samples: int = 96
) -> tuple[object, object]:
    """The pass run with segments, and with every data pass a whole-model run."""
    calibration = _calibration(samples)
    segmented = run_pass(model, "reconstruct", calibration=calibration, reference=teacher)
    monkeypatch.setattr(segments, "SEGMENTS", False)
    whole = run_pass(model, "reconstruct", calibration=calibration, reference=teacher)
    return segmented, whole


def _assert_same_refits(segmented: object, whole: object) -> None:
    """Same refit weights and errors, within float32 rounding of onnxruntime's two graphs."""
    a, b = initializer_arrays(segmented.model), initializer_arrays(whole.model)  # type: ignore[attr-defined]
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-4, atol=1e-6, err_msg=name)
    stats_a, stats_b = segmented.stats, whole.stats  # type: ignore[attr-defined]
    assert stats_a["layers_refit"] == stats_b["layers_refit"]
    for key in ("output_error_before", "output_error_after"):
        assert stats_a[key] == pytest.approx(stats_b[key], rel=1e-5)
    for layer, entry in stats_a["layers"].items():
        for key in ("error_before", "error_after"):
            assert entry[key] == pytest.approx(stats_b["layers"][layer][key], rel=1e-4), (layer, key)


def test_staged_passes_after_the_first_run_segments_and_refit_as_whole_runs_do(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    teacher, student = _pair(STAGES, ("W1", "W2", "W3", "W4"))
    segmented, whole = _both_ways(monkeypatch, student, teacher)
    stats = segmented.stats  # type: ignore[attr-defined]
    assert stats["stages"] == 4 and stats["data_passes"] == 4 and stats["layers_refit"] == 4
    # One whole run (the first pass, with the outputs), then one segment per later pass.
    assert stats["model_runs"] == {"model": {"whole": 1, "segments": 3}, "input_model": {"whole": 1, "segments": 3}}
    assert "whole_model_runs" not in stats and stats["boundary_bytes"]["spilled"] == 0
    assert whole.stats["model_runs"]["model"] == {"whole": 4, "segments": 0}  # type: ignore[attr-defined]
    assert whole.stats["whole_model_runs"] == "segments are off"  # type: ignore[attr-defined]
    assert stats["output_error_after"] < 0.9 * stats["output_error_before"]
    _assert_same_refits(segmented, whole)


def test_a_layer_after_an_if_reading_an_earlier_value_in_its_body_is_staged_after_it() -> None:
    teacher, student = _pair(STAGES, ("W1", "W2", "W3", "W4"))
    result = run_pass(student, "reconstruct", calibration=_calibration(32), reference=teacher)
    # W3 reads the If's output, which reads h2 (stage 1's output) in its body: stage 2, not 0.
    assert result.stats["stages"] == 4


def test_boundary_values_past_the_memory_cap_go_to_disk_and_are_deleted(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    teacher, student = _pair(STAGES, ("W1", "W2", "W3", "W4"))
    monkeypatch.setattr(segments, "IN_MEMORY", 0)
    monkeypatch.setattr(segments.tempfile, "tempdir", str(tmp_path))
    calibration = _calibration(96)
    spilled = run_pass(student, "reconstruct", calibration=calibration, reference=teacher)
    # x and h1 (96 x 12 float32 each) at least, per model.
    assert spilled.stats["boundary_bytes"]["spilled"] >= 2 * 2 * 96 * 12 * 4
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(segments, "IN_MEMORY", 1 << 30)
    in_memory = run_pass(student, "reconstruct", calibration=calibration, reference=teacher)
    assert in_memory.stats["boundary_bytes"]["spilled"] == 0
    for name, array in initializer_arrays(spilled.model).items():
        np.testing.assert_array_equal(array, initializer_arrays(in_memory.model)[name])


def test_a_sequence_between_passes_turns_the_rest_into_whole_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    teacher, student = _pair(SEQUENCE, ("W1", "W2", "W3"))
    segmented, whole = _both_ways(monkeypatch, student, teacher)
    stats = segmented.stats  # type: ignore[attr-defined]
    assert stats["data_passes"] == 3
    assert stats["whole_model_runs"] == "value 'seq' read by a later data pass is not a tensor"
    # Pass 1's segment makes the sequence (its own values are still right); pass 2 runs whole.
    assert stats["model_runs"]["model"] == {"whole": 2, "segments": 1}
    _assert_same_refits(segmented, whole)


def test_digits_with_shifted_images_refits_the_same_in_segments(monkeypatch: pytest.MonkeyPatch) -> None:
    # 32 of the bundled calibration digits (x9 shifted): the comparison, not the accuracy, is tested.
    passes = ["simplify", "prune-channels:ratio=0.5", "reconstruct:augment=shifts,ridge=0.01,samples=32"]
    segmented = onnxshrink.shrink(DIGITS, passes, calibration=DIGITS_CALIB, verify=False)
    monkeypatch.setattr(segments, "SEGMENTS", False)
    whole = onnxshrink.shrink(DIGITS, passes, calibration=DIGITS_CALIB, verify=False)
    records = [result.report["passes"][-1] for result in (segmented, whole)]
    assert records[0]["stats"]["data_passes"] > 2
    assert records[0]["stats"]["model_runs"]["model"]["segments"] == records[0]["stats"]["data_passes"] - 1
    for key in ("output_error_before", "output_error_after"):
        assert records[0]["stats"][key] == pytest.approx(records[1]["stats"][key], rel=1e-5)
    a, b = (initializer_arrays(result.to_proto()) for result in (segmented, whole))
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-4, atol=1e-6, err_msg=name)
