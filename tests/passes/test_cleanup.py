"""``cleanup`` on tiny graphs written in ONNX text: what it changes, what it must leave alone."""

from __future__ import annotations

import onnx_ir as ir
import pytest
from helpers import assert_close, assert_exact_change, assert_same_signature, op_counts, parse_model, run_pass

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
    # At the fixed point the flag is exact: a second run changes nothing.
    assert_exact_change(text, "cleanup", ops_after, stats, context=name)


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
    model = parse_model(LEAVES_ALONE[name])
    cleaned = run_pass(model, "cleanup")
    out, record = cleaned.model, cleaned.record
    assert record["modified"] is False, record["stats"]
    assert op_counts(out) == op_counts(model)
    assert_same_signature(model, out)
    if name != "random_ops_not_merged":
        assert_close(model, out, context=name)


FUNCTION_MODEL = """
<ir_version: 8, opset_import: ["" : 17, "local" : 1, "unused.domain" : 1]>
g (float[2] x) => (float[2] y) { y = local.act(x) }
<domain: "local", opset_import: ["" : 17]>
act (a) => (b) { c = Identity(a)  d = Relu(c)  e = Relu(c)  b = Add(d, e) }
<domain: "local", opset_import: ["" : 17]>
never_called (a) => (b) { b = Neg(a) }
"""


def test_cleanup_inside_functions_and_unused_functions_and_opsets() -> None:
    model = parse_model(FUNCTION_MODEL)
    cleaned = run_pass(model, "cleanup")
    out, record = cleaned.model, cleaned.record
    assert record["modified"] is True
    assert record["stats"] == {"identity_removed": 1, "cse_merged": 1, "functions_removed": 1, "opsets_removed": 1}
    (function,) = out.functions
    assert function.name == "act"
    assert op_counts(function) == {"Relu": 1, "Add": 1}
    assert {o.domain for o in out.opset_import} == {"", "local"}
    assert_close(model, out)


def test_options_turn_rules_off() -> None:
    model = parse_model(CHANGES["duplicate_initializers_then_cse"][0])
    record = run_pass(model, "cleanup:cse=false,dedupe-initializers=false").record
    assert record["modified"] is False
    assert record["options"] == {"cse": False, "cse_max_constant": 1024, "dedupe_initializers": False}


def test_runs_inside_an_onnx_ir_pass_manager() -> None:
    from onnxshrink.passes.cleanup import CleanupPass

    model = ir.from_proto(parse_model(CHANGES["identity_chain"][0]))
    manager = ir.passes.PassManager([CleanupPass()], steps=3)
    result = manager(model)
    assert result.modified is True
    assert [n.op_type for n in result.model.graph] == ["Relu"]
