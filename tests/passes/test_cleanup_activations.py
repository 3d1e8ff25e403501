"""``cleanup`` rule 18: hard-sigmoid and hard-swish written out op by op become one onnxruntime kernel.

Graphs in ONNX text as paddle2onnx writes MobileNetV3's activations; outputs compared with
onnxruntime on inputs spread over the three pieces of the activation (below -3, between, above 3),
with the special values too.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import assert_close, op_counts, parse_model, run_pass

# x * Clip(x + 3, 0, 6) / 6, the Clip bounds as inputs (opset 11 on).
HARDSWISH = """g (float[N, 8, 5, 5] x) => (float[N, 8, 5, 5] y)
    <float[1] three = {3.0}, float zero = {0.0}, float six = {6.0}, float[1] six_div = {6.0}> {
    p = Add(x, three)
    c = Clip(p, zero, six)
    m = Mul(x, c)
    y = Div(m, six_div)
}"""
# The same as paddle writes it with the scaling as a product, and the product's operands swapped.
HARDSWISH_SCALED = """g (float[N, 8] x) => (float[N, 8] y)
    <float three = {3.0}, float zero = {0.0}, float six = {6.0}, float sixth = {0.16666667}> {
    p = Add(three, x)
    c = Clip(p, zero, six)
    m = Mul(c, x)
    y = Mul(sixth, m)
}"""
# The squeeze-excitation gate: Clip(x + 3, 0, 6) / 6 alone.
HARDSIGMOID = """g (float[N, 8, 1, 1] x) => (float[N, 8, 1, 1] y)
    <float[1] three = {3.0}, float zero = {0.0}, float six = {6.0}, float[1] six_div = {6.0}> {
    p = Add(x, three)
    c = Clip(p, zero, six)
    y = Div(c, six_div)
}"""
# What older PyTorch exports write: x * HardSigmoid(x) with alpha 1/6.
TIMES_HARDSIGMOID = """g (float[N, 8] x) => (float[N, 8] y) {
    h = HardSigmoid <alpha = 0.16666667, beta = 0.5> (x)
    y = Mul(x, h)
}"""
# Opset 10: the Clip bounds are attributes.
HARDSWISH_OPSET_10 = """g (float[N, 8] x) => (float[N, 8] y) <float[1] three = {3.0}, float[1] six_div = {6.0}> {
    p = Add(x, three)
    c = Clip <min = 0.0, max = 6.0> (p)
    m = Mul(x, c)
    y = Div(m, six_div)
}"""


def _feed(model_text: str, opset: int) -> dict[str, np.ndarray]:
    model = parse_model(model_text, opset=opset)
    dims = [d.dim_value or 3 for d in model.graph.input[0].type.tensor_type.shape.dim]
    x = np.random.default_rng(0).uniform(-6, 6, dims).astype(np.float32)
    x.reshape(-1)[:6] = [-3.0, 3.0, 0.0, np.inf, -np.inf, 1e30]  # the joints and the extremes
    return {"x": x}


@pytest.mark.parametrize(
    ("text", "opset", "ops_after", "stat"),
    [
        (HARDSWISH, 17, {"HardSwish": 1}, "hardswish_formed"),
        (HARDSWISH, 14, {"HardSwish": 1}, "hardswish_formed"),
        (HARDSWISH, 13, {"HardSigmoid": 1, "Mul": 1}, "hardswish_formed"),
        (HARDSWISH, 11, {"HardSigmoid": 1, "Mul": 1}, "hardswish_formed"),
        (HARDSWISH_SCALED, 17, {"HardSwish": 1}, "hardswish_formed"),
        (HARDSWISH_OPSET_10, 10, {"HardSigmoid": 1, "Mul": 1}, "hardswish_formed"),
        (HARDSIGMOID, 11, {"HardSigmoid": 1}, "hardsigmoid_formed"),
        (TIMES_HARDSIGMOID, 14, {"HardSwish": 1}, "hardswish_formed"),
    ],
)
def test_written_out_activations_become_one_kernel(text: str, opset: int, ops_after: dict[str, int], stat: str) -> None:
    model = parse_model(text, opset=opset)
    result = run_pass(model, "cleanup")
    out = result.model
    assert dict(op_counts(out)) == ops_after
    assert result.record["stats"][stat] == 1
    assert not out.graph.initializer  # the constants went with the nodes
    assert {o.domain: o.version for o in out.opset_import}[""] == opset  # the opset is kept
    assert_close(model, out, _feed(text, opset), context=f"opset {opset}")
    assert run_pass(out, "cleanup").record["modified"] is False


def test_the_activation_keeps_the_output_name_and_the_node_name() -> None:
    model = parse_model(HARDSWISH, opset=17)
    model.graph.node[3].name = "hswish"
    (node,) = run_pass(model, "cleanup").model.graph.node
    assert node.op_type == "HardSwish" and node.name == "hswish" and list(node.output) == ["y"]
    model = parse_model(HARDSWISH, opset=11)
    model.graph.node[3].name = "hswish"
    sigmoid, mul = run_pass(model, "cleanup").model.graph.node
    assert (sigmoid.op_type, mul.op_type, mul.name, list(mul.output)) == ("HardSigmoid", "Mul", "hswish", ["y"])
    assert list(mul.input) == ["x", sigmoid.output[0]]
    alpha, beta = sorted(sigmoid.attribute, key=lambda a: a.name)
    assert alpha.f == np.float32(1.0) / np.float32(6.0) and beta.f == 0.5


LEFT_ALONE = {
    # The Clip output is read twice: fusing would compute it again.
    "clip_read_twice": (
        HARDSWISH.replace("=> (float[N, 8, 5, 5] y)", "=> (float[N, 8, 5, 5] y, float[N, 8, 5, 5] c)"),
        17,
    ),
    "shifted_by_2_9": (HARDSWISH.replace("three = {3.0}", "three = {2.9}"), 17),
    "clipped_at_5": (HARDSWISH.replace("six = {6.0}", "six = {5.0}"), 17),
    "other_input_in_the_product": (
        HARDSWISH.replace("(float[N, 8, 5, 5] x)", "(float[N, 8, 5, 5] x, float[N, 8, 5, 5] z)").replace(
            "m = Mul(x, c)", "m = Mul(z, c)"
        ),
        17,
    ),
    # A [1, 1, 1] constant would raise a rank-2 x to rank 3.
    "constant_raises_the_rank": (
        HARDSWISH_SCALED.replace("float three = {3.0}", "float[1, 1, 1] three = {3.0}").replace(
            "=> (float[N, 8] y)", "=> (float[1, N, 8] y)"
        ),
        17,
    ),
    "double": (TIMES_HARDSIGMOID.replace("float[N, 8]", "double[N, 8]"), 17),
    "hardsigmoid_of_other_slope": (TIMES_HARDSIGMOID.replace("alpha = 0.16666667", "alpha = 0.2"), 17),
}


@pytest.mark.parametrize("name", sorted(LEFT_ALONE))
def test_near_misses_are_left_alone(name: str) -> None:
    text, opset = LEFT_ALONE[name]
    model = parse_model(text, opset=opset)
    result = run_pass(model, "cleanup")
    assert op_counts(result.model) == op_counts(model), name
    assert not {k for k in result.record["stats"] if k.startswith("hard")}
