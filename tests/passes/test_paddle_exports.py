"""Paddle exports (weights in ``Constant`` nodes, opset 11/12) through the lossy passes (issue 13 item 16).

Real models: rapidocr's PP-OCR classifier and recognizer, as paddle2onnx wrote them (no
``simplify``/``fold`` first). Small ONNX-text models check that raising the opset rewrites every
op whose meaning changed, with onnxruntime numerics identical before and after.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from helpers import assert_outputs_close, fetch, get_real_model, parse_model, real_model_feed, run, run_pass

import onnxshrink
from onnxshrink.passes.quantize.opset import opset_needed, raise_opset


def _real(model_id: str) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    entry = get_real_model(model_id)
    path = fetch(entry)
    return onnx.load(path), real_model_feed(entry, path)


def _constant_nodes(model: onnx.ModelProto | ir.Model) -> int:
    nodes = model.graph.node if isinstance(model, onnx.ModelProto) else model.graph
    return sum(1 for node in nodes if node.op_type == "Constant")


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_prune_lifts_the_constant_weights_of_a_raw_paddle_classifier() -> None:
    """Before: 566 -> 566 nodes, every layer skipped with 'run fold first'."""
    model, feed = _real("rapidocr-cls")
    result = onnxshrink.shrink(model, ["prune:sparsity=0.5"], verify=False)
    stats = result.report["passes"][0]["stats"]
    assert (
        stats["constants_lifted"] == 54 and stats["layers_pruned"] == 27
    )  # the others are under min-size or first/last
    assert stats["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert not any("fold first" in why for why in stats.get("skipped", {}).values())
    assert _constant_nodes(result.model) == _constant_nodes(model) - 54
    # The same weights pruned as after an explicit fold: the same outputs.
    folded = onnxshrink.shrink(model, ["fold", "prune:sparsity=0.5"], verify=False)
    assert folded.report["passes"][1]["stats"]["layers_pruned"] == 27
    expected, actual = run(ir.to_proto(folded.model), feed), run(ir.to_proto(result.model), feed)
    assert_outputs_close(expected, actual, rtol=1e-5, atol=1e-6)


def test_quantize_raises_a_raw_paddle_classifier_to_opset_13_itself() -> None:
    """Before: refused ('Softmax@0' changed meaning after opset 11: convert the model first)."""
    model, feed = _real("rapidocr-cls")
    rng = np.random.default_rng(3)
    # The checked line is among the calibration samples: with noise alone the ranges fit no real
    # line, and on an AVX2 CPU (7-bit weights) the two close class probabilities swapped.
    noise = rng.uniform(-1.0, 1.0, (7, 3, 48, 192)).astype(np.float32)
    calibration = {"x": np.concatenate([feed["x"], noise])}
    result = onnxshrink.shrink(model, ["quantize:keep-slow-float=false"], calibration=calibration, verify=False)
    stats = result.report["passes"][0]["stats"]
    assert stats["opset_raised"] == "11->13 (1 nodes rewritten to keep their meaning)"
    assert stats["constants_lifted"] == 54 and stats["weights_quantized"] == 54
    out = ir.to_proto(result.model)
    assert {o.domain: o.version for o in out.opset_import}[""] == 13
    (reference,), (quantized,) = run(model, feed), run(out, feed)
    assert quantized.shape == reference.shape and _cosine(reference, quantized) > 0.99
    assert np.abs(quantized - reference).max() < 0.1  # two class probabilities


def test_quantize_quantizes_a_raw_paddle_recognizer() -> None:
    """Before: every layer left float, not a word said."""
    model, feed = _real("rapidocr-rec")
    rng = np.random.default_rng(3)
    calibration = {"x": rng.uniform(-1.0, 1.0, (2, 3, 48, 160)).astype(np.float32)}
    # Without the CPU speed rules, which leave float the layers whose int8 kernel is slow here.
    spec = "quantize:samples=2,keep-slow-float=false"
    result = onnxshrink.shrink(model, [spec], calibration=calibration, verify=False)
    stats = result.report["passes"][0]["stats"]
    assert stats["constants_lifted"] > 0 and stats["weights_quantized"] > 0.5 * stats["constants_lifted"]
    (reference,), (quantized,) = run(model, feed), run(ir.to_proto(result.model), feed)
    assert quantized.shape == reference.shape and _cosine(reference, quantized) > 0.9


# Each op written for an older opset, the opset it is raised to, and the node that means the same there.
REWRITES = [
    (11, "float[2, 3, 4] y", "y = Softmax <axis = 1> (x)", 13, ["Flatten", "Shape", "Softmax", "Reshape"]),
    (11, "float[2, 3, 4] y", "y = LogSoftmax <axis = 0> (x)", 13, ["Flatten", "Shape", "LogSoftmax", "Reshape"]),
    (12, "float[2, 3, 4] y", "y = Hardmax <axis = 1> (x)", 13, ["Flatten", "Shape", "Hardmax", "Reshape"]),
    (11, "float[2, 1, 4] y, float[2, 2, 4] z", "y, z = Split <axis = 1, split = [1, 2]> (x)", 13, ["Split"]),
    (11, "float[2, 1, 3, 4] y", "y = Unsqueeze <axes = [1]> (x)", 13, ["Unsqueeze"]),
    (12, "float[2, 3] y", "y = ReduceSum <axes = [2], keepdims = 0> (x)", 13, ["ReduceSum"]),
    (11, "float[2, 3, 4] y", "y = Dropout <ratio = 0.25> (x)", 13, ["Dropout"]),
    (12, "float[2, 1, 4] y", "y = ReduceMean <axes = [1]> (x)", 21, ["ReduceMean"]),
    (13, "float[1, 3, 1] y", "y = ReduceL2 <axes = [0, 2]> (x)", 18, ["ReduceL2"]),
]


@pytest.mark.parametrize(("opset", "outputs", "node", "target", "ops"), REWRITES)
def test_raising_the_opset_keeps_the_meaning(opset: int, outputs: str, node: str, target: int, ops: list[str]) -> None:
    text = f"g (float[2, 3, 4] x) => ({outputs}) {{ {node} }}"
    model = parse_model(text, opset=opset)
    ir_model = ir.serde.deserialize_model(model)
    assert opset_needed(ir_model, target, "test") == target
    assert raise_opset(ir_model, target) == f"{opset}->{target} (1 nodes rewritten to keep their meaning)"
    raised = ir.to_proto(ir_model)
    onnx.checker.check_model(raised, full_check=True)
    assert [n.op_type for n in raised.graph.node] == ops
    assert not any(a.name in ("axes", "split", "ratio") for n in raised.graph.node for a in n.attribute)
    assert [o.name for o in raised.graph.output] == [o.name for o in model.graph.output]
    feed = {"x": np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)}
    assert_outputs_close(run(model, feed), run(raised, feed), rtol=1e-5, atol=1e-6, context=node)


def test_a_rewrite_inside_an_if_branch_adds_its_constant_to_the_branch() -> None:
    text = """g (bool c, float[2, 3, 4] x) => (float[2, 1, 3, 4] y) {
        y = If (c) <
            then_branch = t () => (float[2, 1, 3, 4] a) { a = Unsqueeze <axes = [1]> (x) },
            else_branch = e () => (float[2, 1, 3, 4] b) { n = Neg(x)  b = Unsqueeze <axes = [1]> (n) }
        >
    }"""
    model = parse_model(text, opset=11)
    ir_model = ir.serde.deserialize_model(model)
    assert raise_opset(ir_model, 13) == "11->13 (2 nodes rewritten to keep their meaning)"
    raised = ir.to_proto(ir_model)
    onnx.checker.check_model(raised, full_check=True)
    x = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    for c in (True, False):
        feed = {"c": np.array(c), "x": x}
        assert_outputs_close(run(model, feed), run(raised, feed), rtol=1e-5, atol=1e-6)


def test_an_op_without_a_rewrite_is_still_refused_with_its_name() -> None:
    text = (
        "g (float[2, 8, 4] x, float[8] s) => (float[2, 8, 4] y) { y = GroupNormalization <num_groups = 2> (x, s, s) }"
    )
    ir_model = ir.serde.deserialize_model(parse_model(text, opset=18, check=False))
    with pytest.raises(onnxshrink.errors.UsageError, match=r"\(GroupNormalization\) changed meaning after opset 18"):
        opset_needed(ir_model, 21, "test")


def test_reconstruct_lifts_constant_weights_and_biases() -> None:
    text = """g (float[N, 8] x) => (float[N, 4] y) {
        w = Constant <value = float[8, 4] {1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3, 4, 5, 6, 7, 8,
                                            1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3, 4, 5, 6, 7, 8}> ()
        b = Constant <value = float[4] {1, 2, 3, 4}> ()
        y = Gemm (x, w, b)
    }"""
    model = parse_model(text, opset=11)
    calibration = {"x": np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32)}
    result = run_pass(model, "reconstruct", calibration=calibration)
    assert result.modified is True and result.stats["constants_lifted"] == 2
    assert [n.op_type for n in result.model.graph.node] == ["Gemm"]
    assert sorted(t.name for t in result.model.graph.initializer) == ["b", "w"]
    assert result.stats["skipped"]["Gemm#0"].startswith("already matches the input model")
    assert_outputs_close(run(model, calibration), run(result.model, calibration), rtol=1e-5, atol=1e-6)
