"""``cleanup`` on tiny graphs written in ONNX text: what it changes, what it must leave alone."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnx.parser
import onnx_ir as ir
import pytest
from ort_check import assert_outputs_close, run

import onnxshrink

HEADER = '<ir_version: 8, opset_import: ["" : 17]>'


def _model(text: str) -> onnx.ModelProto:
    model = onnx.parser.parse_model(text if text.lstrip().startswith("<") else HEADER + text)
    onnx.checker.check_model(model)
    return model


def _ops(model: onnx.ModelProto) -> Counter[str]:
    return Counter(n.op_type for n in model.graph.node)


def _feed(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    feed = {}
    for value in model.graph.input:
        dims = [d.dim_value or 1 for d in value.type.tensor_type.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
        feed[value.name] = (
            rng.integers(0, 2, dims).astype(dtype) if dtype == np.bool_ else rng.standard_normal(dims).astype(dtype)
        )
    return feed


def _cleanup(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict]:
    result = onnxshrink.shrink(model, ["cleanup"], verify=False)
    out = result.to_proto()
    onnx.checker.check_model(out, full_check=True)
    return out, result.report["passes"][0]


CHANGES = {
    "identity_chain": (
        """g (float[2] x) => (float[2] y) { a = Identity(x)  b = Identity(a)  y = Relu(b) }""",
        {"Relu": 1},
        {"identity_removed": 2},
    ),
    "identity_to_output_renames_producer": (
        """g (float[2] x) => (float[2] y) { a = Relu(x)  y = Identity(a) }""",
        {"Relu": 1},
        {"identity_removed": 1},
    ),
    "inference_dropout": (
        """g (float[2] x) => (float[2] y) { a = Dropout(x)  y = Relu(a) }""",
        {"Relu": 1},
        {"dropout_removed": 1},
    ),
    "dropout_training_off_constant": (
        """g (float[2] x) => (float[2] y) <bool t = {0}, float r = {0.5}> { a = Dropout(x, r, t)  y = Relu(a) }""",
        {"Relu": 1},
        {"dropout_removed": 1, "initializers_removed": 2},
    ),
    "common_subexpression": (
        """g (float[2] x) => (float[2] y) { a = Relu(x)  b = Relu(x)  y = Add(a, b) }""",
        {"Relu": 1, "Add": 1},
        {"cse_merged": 1},
    ),
    "cse_chain": (
        """g (float[2] x) => (float[2] y) { a = Relu(x)  b = Relu(x)  c = Neg(a)  d = Neg(b)  y = Add(c, d) }""",
        {"Relu": 1, "Neg": 1, "Add": 1},
        {"cse_merged": 2},
    ),
    "cse_into_graph_output": (
        """g (float[2] x) => (float[2] y, float[2] z) { a = Relu(x)  z = Relu(x)  y = Neg(a) }""",
        {"Relu": 1, "Neg": 1},
        {"cse_merged": 1},
    ),
    "duplicate_initializers_then_cse": (
        """g (float[2] x) => (float[2] y) <float[2] w1 = {1.0, 2.0}, float[2] w2 = {1.0, 2.0}>
        { a = Mul(x, w1)  b = Mul(x, w2)  y = Add(a, b) }""",
        {"Mul": 1, "Add": 1},
        {"initializers_merged": 1, "cse_merged": 1},
    ),
    "dead_nodes_and_initializers": (
        """g (float[2] x) => (float[2] y) <float[2] w = {1.0, 2.0}> { a = Mul(x, w)  b = Neg(a)  y = Relu(x) }""",
        {"Relu": 1},
        {"dead_nodes_removed": 2, "initializers_removed": 1},
    ),
    "identity_inside_if_branch": (
        """g (bool c, float[2] x) => (float[2] y) {
            y = If(c) <then_branch = t () => (float[2] o) { p = Identity(x)  o = Relu(p) },
                      else_branch = e () => (float[2] q) { q = Neg(x) }>
        }""",
        {"If": 1},
        {"identity_removed": 1},
    ),
    "identity_inside_loop_body": (
        # The body's own input-to-output Identity stays (rule 1); the one in between goes.
        """g (float[2] x) => (float[2] y) <int64 n = {2}, bool go = {1}> {
            y = Loop(n, go, x) <body = b (int64 i, bool cin, float[2] v) => (bool cout, float[2] vo) {
                cout = Identity(cin)  p = Identity(v)  vo = Relu(p) }>
        }""",
        {"Loop": 1},
        {"identity_removed": 1},
    ),
    "dropout_training_off_by_constant_node": (
        # A Constant node's output is a constant (onnxshrink.ir.constants): training_mode is off.
        """g (float[2] x) => (float[2] y) <float r = {0.5}> {
            a = Relu(x)  t = Constant <value = bool {0}> ()  y = Dropout(a, r, t) }""",
        {"Relu": 1},
        {"dropout_removed": 1, "dead_nodes_removed": 1, "initializers_removed": 1},
    ),
}


@pytest.mark.parametrize("name", sorted(CHANGES))
def test_cleanup_changes(name: str) -> None:
    text, ops_after, stats = CHANGES[name]
    model = _model(text)
    out, record = _cleanup(model)
    assert dict(_ops(out)) == ops_after
    assert record["modified"] is True
    assert record["stats"] == stats
    assert [v.name for v in out.graph.input] == [v.name for v in model.graph.input]
    assert [v.name for v in out.graph.output] == [v.name for v in model.graph.output]
    assert [v.type for v in out.graph.output] == [v.type for v in model.graph.output]
    feed = _feed(model)
    assert_outputs_close(run(model, feed), run(out, feed), context=name)
    # At the fixed point the flag is exact.
    _, again = _cleanup(out)
    assert again["modified"] is False and again["stats"] == {}


LEAVES_ALONE = {
    "input_straight_to_output": """g (float[2] x) => (float[2] y) { y = Identity(x) }""",
    "initializer_to_output": """g (float[2] x) => (float[2] y, float[2] z) <float[2] w = {1.0, 2.0}>
        { y = Relu(x)  z = Identity(w) }""",
    "identity_of_another_output": """g (float[2] x) => (float[2] y, float[2] z) { y = Relu(x)  z = Identity(y) }""",
    "dropout_mask_used": """g (float[2] x) => (float[2] y, bool[2] m) { y, m = Dropout(x) }""",
    "dropout_training_on": """g (float[2] x, bool t) => (float[2] y) <float r = {0.5}> { y = Dropout(x, r, t) }""",
    "dropout_training_overridable": """g (float[2] x, bool t) => (float[2] y) <float r = {0.5}, bool t = {0}> {
        a = Relu(x)  y = Dropout(a, r, t) }""",
    "random_ops_not_merged": """g (float[2] x) => (float[2] y) {
        a = RandomNormalLike <seed = 1.0> (x)  b = RandomNormalLike <seed = 1.0> (x)  y = Add(a, b) }""",
    "two_outputs_same_expression": """g (float[2] x) => (float[2] y, float[2] z) { y = Relu(x)  z = Relu(x) }""",
    "different_attributes": """g (float[2,3] x) => (float[2,3] y) {
        a = Softmax <axis = 0> (x)  b = Softmax <axis = 1> (x)  y = Add(a, b) }""",
    "unused_graph_input_kept": """g (float[2] x, float[2] unused) => (float[2] y) { y = Relu(x) }""",
}


@pytest.mark.parametrize("name", sorted(LEAVES_ALONE))
def test_cleanup_leaves_alone(name: str) -> None:
    model = _model(LEAVES_ALONE[name])
    out, record = _cleanup(model)
    assert record["modified"] is False, record["stats"]
    assert _ops(out) == _ops(model)
    assert [v.name for v in out.graph.input] == [v.name for v in model.graph.input]
    assert [v.name for v in out.graph.output] == [v.name for v in model.graph.output]
    if name != "random_ops_not_merged":
        feed = _feed(model)
        assert_outputs_close(run(model, feed), run(out, feed), context=name)


FUNCTION_MODEL = """
<ir_version: 8, opset_import: ["" : 17, "local" : 1, "unused.domain" : 1]>
g (float[2] x) => (float[2] y) { y = local.act(x) }
<domain: "local", opset_import: ["" : 17]>
act (a) => (b) { c = Identity(a)  d = Relu(c)  e = Relu(c)  b = Add(d, e) }
<domain: "local", opset_import: ["" : 17]>
never_called (a) => (b) { b = Neg(a) }
"""


def test_cleanup_inside_functions_and_unused_functions_and_opsets() -> None:
    model = _model(FUNCTION_MODEL)
    out, record = _cleanup(model)
    assert record["modified"] is True
    assert record["stats"] == {"identity_removed": 1, "cse_merged": 1, "functions_removed": 1, "opsets_removed": 1}
    (function,) = out.functions
    assert function.name == "act"
    assert Counter(n.op_type for n in function.node) == {"Relu": 1, "Add": 1}
    assert {o.domain for o in out.opset_import} == {"", "local"}
    feed = _feed(model)
    assert_outputs_close(run(model, feed), run(out, feed))


def test_options_turn_rules_off() -> None:
    model = _model(CHANGES["duplicate_initializers_then_cse"][0])
    result = onnxshrink.shrink(model, ["cleanup:cse=false,dedupe-initializers=false"], verify=False)
    record = result.report["passes"][0]
    assert record["modified"] is False
    assert record["options"] == {"cse": False, "cse_max_constant": 1024, "dedupe_initializers": False}


def test_runs_inside_an_onnx_ir_pass_manager() -> None:
    from onnxshrink.passes.cleanup import CleanupPass

    model = ir.from_proto(_model(CHANGES["identity_chain"][0]))
    manager = ir.passes.PassManager([CleanupPass()], steps=3)
    result = manager(model)
    assert result.modified is True
    assert [n.op_type for n in result.model.graph] == ["Relu"]
