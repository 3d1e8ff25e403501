"""The core IR helpers every pass shares: scopes and opsets, names, constants, the op table, shapes."""

from __future__ import annotations

import onnx
import onnx.parser
import onnx_ir as ir
import pytest
from helpers import parse_ir_model

from onnxshrink.ir.constants import constant_array, constant_ints, constant_scalar, is_constant
from onnxshrink.ir.graphs import (
    canonical_domain,
    fresh_name,
    graph_likes,
    is_onnx_op,
    opset_version,
    scoped_graph_likes,
    taken_names,
)
from onnxshrink.ir.optable import OpTable
from onnxshrink.ir.shapes import inferred_copy

# Unchecked where used: the checker wants a function to import the model's default-domain opset,
# and opset_version must still answer for one that does not.
NESTED = """
<ir_version: 8, opset_import: ["" : 13, "local" : 1]>
main (bool c, float[2] x) => (float[2] y) <float[2] w = {1.0, 2.0}> {
    t = If(c) <then_branch = th () => (float[2] a) { a = Relu(x) }, else_branch = el () => (float[2] b) { b = Neg(x) }>
    y = local.f(c, t)
}
<domain: "local", opset_import: ["" : 17]>
f (c, v) => (o) {
    o = If(c) <then_branch = ft () => (float[2] p) { p = Abs(v) }, else_branch = fe () => (float[2] q) { q = Exp(v) }>
}
"""


def test_scoped_graph_likes_names_the_function_and_its_opset() -> None:
    model = parse_ir_model(NESTED, check=False)
    scopes = [
        (graph.name, None if function is None else function.name) for graph, function in scoped_graph_likes(model)
    ]
    assert scopes == [("main", None), ("th", None), ("el", None), ("f", "f"), ("ft", "f"), ("fe", "f")]
    assert [g.name for g in graph_likes(model)] == [name for name, _ in scopes]
    opsets = {graph.name: opset_version(model, scope=function) for graph, function in scoped_graph_likes(model)}
    assert opsets == {"main": 13, "th": 13, "el": 13, "f": 17, "ft": 17, "fe": 17}


def test_opset_version_policy_for_missing_imports() -> None:
    model = parse_ir_model('<ir_version: 8, opset_import: ["ai.onnx" : 11]> g (float x) => (float y) { y = Relu(x) }')
    assert opset_version(model) == 11  # either spelling of the default domain
    assert opset_version(model, "com.microsoft") == 1
    del model.opset_imports["ai.onnx"]
    assert opset_version(model) == onnx.defs.onnx_opset_version()


def test_domains_and_names() -> None:
    model = parse_ir_model(NESTED, check=False)
    node = next(iter(model.graph))
    assert is_onnx_op(node) and is_onnx_op(node, "If") and not is_onnx_op(node, "Loop")
    assert canonical_domain("ai.onnx") == "" and canonical_domain("local") == "local"
    taken = taken_names(model)
    assert {"x", "w", "t", "a", "b", "o", "p", "q"} <= taken
    assert fresh_name(taken, "w") == "w__1" and "w__1" in taken
    assert fresh_name(taken, "new") == "new"


def test_constant_policy_overridable_initializer_and_constant_nodes() -> None:
    model = parse_ir_model(
        """<ir_version: 8, opset_import: ["" : 17]>
        g (float[2] x, float[2] o) => (float[2] y) <float[2] w = {1.0, 2.0}, float[2] o = {0.0, 0.0}> {
            k = Constant <value_ints = [3, 4]> ()  s = Constant <value_float = 2.5> ()
            a = Add(x, w)  b = Add(a, o)  y = Mul(b, s) }"""
    )
    values = {v.name: v for node in model.graph for v in node.outputs} | dict(model.graph.initializers)
    assert is_constant(values["w"]) and constant_array(values["w"]).tolist() == [1.0, 2.0]
    assert not is_constant(values["o"])  # a graph input too: the caller may override it
    assert constant_ints(values["k"]) == [3, 4] and constant_scalar(values["s"]) == 2.5
    assert constant_array(values["w"], max_elements=1) is None
    assert not is_constant(values["a"]) and constant_ints(values["w"]) is None


def test_op_table_opset_ranges_domains_and_order() -> None:
    table: OpTable[str] = OpTable("test")
    table.add("Squeeze", "attribute axes", until=12)
    table.add("Squeeze", "input axes", since=13)
    table.register("Squeeze", since=1)("fallback")
    table.add("Custom", "custom", domain="my.ops")
    squeeze = ir.node("Squeeze", [], domain="ai.onnx")
    assert table.lookup(squeeze, 11) == "attribute axes"
    assert table.lookup_all(squeeze, 13) == ["input axes", "fallback"]
    assert table.lookup_all(squeeze, None) == ["attribute axes", "input axes", "fallback"]
    assert table.lookup(ir.node("Custom", []), 1) is None and ("my.ops", "Custom") in table
    assert list(table.op_types()) == ["Squeeze"]
    with pytest.raises(ValueError, match=r"test: Relu registered for opsets 5\.\.4"):
        table.add("Relu", "never", since=5, until=4)


def test_inferred_copy_leaves_the_model_alone() -> None:
    model = parse_ir_model(
        """<ir_version: 8, opset_import: ["" : 17]>
        g (float[2, 3] x) => (float[3, 2] y) { t = Relu(x)  y = Transpose(t) }"""
    )
    inferred = inferred_copy(model, purpose="test")
    assert inferred is not None
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in inferred.graph.value_info}
    assert shapes == {"t": [2, 3]}
    assert next(iter(model.graph)).outputs[0].shape is None  # the model itself is not annotated
