"""``prune`` on tiny graphs built with onnx.helper and random weights, and on the digits CNN."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper
import onnx.shape_inference
import pytest
from helpers import (
    DIGITS,
    DIGITS_CALIB,
    DIGITS_TEST,
    OnceReader,
    initializer_arrays,
    parse_model,
    random_feed,
    run,
    run_pass,
)

import onnxshrink
import onnxshrink.passes.prune  # registers the pass
from onnxshrink.errors import UsageError
from onnxshrink.passes.prune import sensitivity as sensitivity

FLOAT = onnx.TensorProto.FLOAT

# (op, weight shape, attributes, input shape, reduction axis of the weight)
LAYERS: dict[str, tuple[str, tuple[int, ...], dict[str, Any], tuple[int, ...], int]] = {
    "conv": ("Conv", (16, 32, 3, 3), {"pads": [1, 1, 1, 1]}, (1, 32, 5, 5), 1),
    "conv-transpose": ("ConvTranspose", (32, 16, 3, 3), {}, (1, 32, 4, 4), 0),
    "gemm": ("Gemm", (32, 24), {"transB": 0}, (2, 32), 0),
    "gemm-transb": ("Gemm", (24, 32), {"transB": 1}, (2, 32), 1),
    "matmul": ("MatMul", (32, 24), {}, (2, 32), 0),
}


def satisfies_nm(weight: np.ndarray, n: int, m: int, axis: int) -> bool:
    """Every ``m`` consecutive elements along ``axis`` hold at most ``n`` non-zeros."""
    if weight.shape[axis] % m:
        return False
    groups = np.moveaxis(weight, axis, -1).reshape(-1, m)
    return bool(np.all(np.count_nonzero(groups, axis=1) <= n))


def _layers_model(
    nodes: list[onnx.NodeProto],
    weights: dict[str, np.ndarray],
    inputs: dict[str, tuple[int, ...]],
    output: str = "Y",
) -> onnx.ModelProto:
    """A model reading ``inputs`` and ``weights``; the output's shape comes from ONNX shape inference."""
    graph = oh.make_graph(
        nodes,
        "g",
        [oh.make_tensor_value_info(name, FLOAT, shape) for name, shape in inputs.items()],
        [],
        [onnx.numpy_helper.from_array(array, name) for name, array in weights.items()],
    )
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)], ir_version=8)
    inferred = onnx.shape_inference.infer_shapes(model).graph.value_info
    model.graph.output.extend(v for v in inferred if v.name == output)
    onnx.checker.check_model(model)
    return model


def _layer(case: str, dtype: type = np.float32) -> onnx.ModelProto:
    op, shape, attrs, x_shape, _ = LAYERS[case]
    weight: np.ndarray = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    node = oh.make_node(op, ["X", "W"], ["Y"], name="layer", **attrs)
    return _layers_model([node], {"W": weight}, {"X": x_shape})


def _chain(count: int = 3, size: int = 32) -> onnx.ModelProto:
    """X -> mm0 (MatMul) -> gemm1 (Gemm) -> mm2 (MatMul) ..., each with its own [size, size] weight."""
    rng = np.random.default_rng(1)
    nodes, weights, previous = [], {}, "X"
    for index in range(count):
        op = "Gemm" if index % 2 else "MatMul"
        name = f"{'gemm' if index % 2 else 'mm'}{index}"
        out = "Y" if index == count - 1 else f"h{index}"
        nodes.append(oh.make_node(op, [previous, f"W{index}"], [out], name=name))
        weights[f"W{index}"] = rng.standard_normal((size, size)).astype(np.float32)
        previous = out
    return _layers_model(nodes, weights, {"X": (2, size)})


@pytest.mark.parametrize("case", sorted(LAYERS))
@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.9])
def test_unstructured_reaches_the_target_per_layer(case: str, sparsity: float) -> None:
    model = _layer(case)
    result = run_pass(model, f"prune:sparsity={sparsity},min-size=0,keep-first-last=false")
    out, record = result.model, result.record
    before, after = initializer_arrays(model)["W"], initializer_arrays(out)["W"]
    assert after.dtype == before.dtype and after.shape == before.shape
    assert abs(np.count_nonzero(after == 0) - sparsity * after.size) <= 1
    kept = after != 0
    np.testing.assert_array_equal(after[kept], before[kept])
    assert np.abs(before[~kept]).max() <= np.abs(before[kept]).min()
    assert record["modified"] is True
    stats = record["stats"]
    assert stats["layers_pruned"] == 1 and stats["weights_zeroed"] == np.count_nonzero(after == 0)
    assert stats["layers"]["layer"]["sparsity"] == pytest.approx(sparsity, abs=1 / after.size)
    assert 0 < stats["layers"]["layer"]["kept_magnitude"] < 1
    feed = random_feed(model, seed=2)
    assert run(out, feed)[0].shape == run(model, feed)[0].shape


@pytest.mark.parametrize("case", sorted(LAYERS))
@pytest.mark.parametrize(("n", "m"), [(2, 4), (4, 8)])
def test_nm_along_the_reduction_axis(case: str, n: int, m: int) -> None:
    model = _layer(case)
    axis = LAYERS[case][4]
    result = run_pass(model, f"prune:pattern={n}:{m},min-size=0,keep-first-last=false")
    out, record = result.model, result.record
    before, after = initializer_arrays(model)["W"], initializer_arrays(out)["W"]
    assert satisfies_nm(after, n, m, axis)
    groups_after = np.moveaxis(after, axis, -1).reshape(-1, m)
    groups_before = np.moveaxis(before, axis, -1).reshape(-1, m)
    assert np.all(np.count_nonzero(groups_after, axis=1) == n)
    # The kept weights of each group are its n largest.
    kept = np.where(groups_after != 0, np.abs(groups_before), np.inf).min(axis=1)
    dropped = np.where(groups_after == 0, np.abs(groups_before), -np.inf).max(axis=1)
    assert np.all(kept >= dropped)
    other = next(a for a in range(after.ndim) if a != axis and after.shape[a] % m == 0)
    assert not satisfies_nm(after, n, m, other)
    assert record["stats"]["sparsity"] == pytest.approx(1 - n / m)


@pytest.mark.parametrize(
    ("shape", "reason"),
    [((12, 16, 3, 3), "12 output channels"), ((16, 8, 3, 3), "8 reduction channels")],
)
def test_nm_skips_layers_asp_cannot_sparsify(shape: tuple[int, ...], reason: str) -> None:
    weight = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    model = _layers_model(
        [oh.make_node("Conv", ["X", "W"], ["Y"], name="c")], {"W": weight}, {"X": (1, shape[1], 4, 4)}
    )
    result = run_pass(model, "prune:pattern=2:4,min-size=0,keep-first-last=false")
    out, record = result.model, result.record
    assert reason in record["stats"]["skipped"]["c"]
    assert record["modified"] is False and record["stats"]["layers_pruned"] == 0
    np.testing.assert_array_equal(initializer_arrays(out)["W"], weight)


@pytest.mark.parametrize("criterion", ["l1", "l2"])
def test_global_scope_one_threshold_over_normalised_layers(criterion: str) -> None:
    model = _chain(3)
    scaled = onnx.ModelProto()
    scaled.CopyFrom(model)
    w1 = scaled.graph.initializer[1]
    w1.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(w1) * 100, w1.name))
    spec = f"prune:sparsity=0.6,scope=global,criterion={criterion},min-size=0,keep-first-last=false"
    result = run_pass(model, spec)
    out, record = result.model, result.record
    out_scaled = run_pass(scaled, spec).model
    zeros = {name: int(np.count_nonzero(w == 0)) for name, w in initializer_arrays(out).items()}
    assert sum(zeros.values()) == round(0.6 * 3 * 32 * 32)
    assert len(set(zeros.values())) > 1  # one threshold, not the same count per layer
    # Dividing by the layer's norm makes a layer's share independent of its scale.
    for name, weight in initializer_arrays(out_scaled).items():
        np.testing.assert_array_equal(weight == 0, initializer_arrays(out)[name] == 0)
    assert record["stats"]["sparsity"] == pytest.approx(0.6, abs=1e-3)


def test_l1_and_l2_differ_only_through_the_layer_norm() -> None:
    spec = "prune:sparsity=0.5,min-size=0,keep-first-last=false,criterion="
    layer_l1 = run_pass(_chain(3), spec + "l1").model
    layer_l2 = run_pass(_chain(3), spec + "l2").model
    for name, weight in initializer_arrays(layer_l1).items():
        np.testing.assert_array_equal(weight, initializer_arrays(layer_l2)[name])


@pytest.mark.parametrize(
    ("options", "pruned"),
    [
        ("include=Gemm", {"W1"}),
        ("include=MatMul", {"W0", "W2"}),
        ("exclude=Gemm", {"W0", "W2"}),
        ("exclude=mm*", {"W1"}),
        ("include=mm*,exclude=mm2", {"W0"}),
        ("include=MatMul,exclude=mm0", {"W2"}),
    ],
)
def test_include_and_exclude_by_op_type_and_glob(options: str, pruned: set[str]) -> None:
    model = _chain(3)
    result = run_pass(model, f"prune:{options},min-size=0,keep-first-last=false")
    out, record = result.model, result.record
    changed = {
        name for name, w in initializer_arrays(out).items() if not np.array_equal(w, initializer_arrays(model)[name])
    }
    assert changed == pruned
    skipped = record["stats"]["skipped"]
    layer_of = {"W0": "mm0", "W1": "gemm1", "W2": "mm2"}
    assert set(skipped) == {layer for weight, layer in layer_of.items() if weight not in pruned}
    assert all("include" in why or "excluded" in why for why in skipped.values())


def test_min_size_and_keep_first_last() -> None:
    model = _chain(3)
    record = run_pass(model, "prune:min-size=1025,keep-first-last=false").record
    assert record["modified"] is False
    assert record["stats"]["skipped"] == dict.fromkeys(["mm0", "gemm1", "mm2"], "1024 weights < min-size 1025")
    result = run_pass(model, "prune:min-size=1024")
    out, record = result.model, result.record
    assert set(record["stats"]["layers"]) == {"gemm1"}
    assert "first" in record["stats"]["skipped"]["mm0"] and "last" in record["stats"]["skipped"]["mm2"]
    np.testing.assert_array_equal(initializer_arrays(out)["W0"], initializer_arrays(model)["W0"])


def test_shared_weight_is_pruned_once() -> None:
    weight = np.random.default_rng(0).standard_normal((32, 32)).astype(np.float32)
    nodes = [
        oh.make_node("MatMul", ["X", "W"], ["h"], name="a"),
        oh.make_node("MatMul", ["h", "W"], ["Y"], name="b"),
    ]
    model = _layers_model(nodes, {"W": weight}, {"X": (2, 32)})
    result = run_pass(model, "prune:sparsity=0.5,min-size=0,keep-first-last=false")
    out, record = result.model, result.record
    assert record["stats"]["layers"] == {
        "a": {"sparsity": 0.5, "kept_magnitude": pytest.approx(0.8, abs=0.05), "shared_with": ["b"]}
    }
    assert record["stats"]["weights_zeroed"] == 512 and len(out.graph.initializer) == 1
    record = run_pass(model, "prune:sparsity=0.5,min-size=0,keep-first-last=false,exclude=b").record
    assert record["modified"] is False
    assert record["stats"]["skipped"] == {"a": "weight 'W' is shared with skipped layer 'b'", "b": "excluded by 'b'"}


def test_layer_in_an_if_branch() -> None:
    weight = np.random.default_rng(0).standard_normal((32, 32)).astype(np.float32)
    then_branch = oh.make_graph(
        [oh.make_node("MatMul", ["X", "W"], ["t"], name="inner")],
        "then",
        [],
        [oh.make_tensor_value_info("t", FLOAT, None)],
    )
    else_branch = oh.make_graph(
        [oh.make_node("Identity", ["X"], ["e"])], "else", [], [oh.make_tensor_value_info("e", FLOAT, (2, 32))]
    )
    node = oh.make_node("If", ["cond"], ["Y"], then_branch=then_branch, else_branch=else_branch)
    graph = oh.make_graph(
        [node],
        "g",
        [oh.make_tensor_value_info("X", FLOAT, (2, 32)), oh.make_tensor_value_info("cond", onnx.TensorProto.BOOL, ())],
        [oh.make_tensor_value_info("Y", FLOAT, (2, 32))],
        [onnx.numpy_helper.from_array(weight, "W")],
    )
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)], ir_version=8)
    result = run_pass(model, "prune:sparsity=0.5,min-size=0,keep-first-last=false")
    out, record = result.model, result.record
    assert set(record["stats"]["layers"]) == {"inner"}
    assert np.count_nonzero(initializer_arrays(out)["W"] == 0) == 512
    feed = {**random_feed(model, seed=2), "cond": np.array(True)}
    x = feed["X"]
    np.testing.assert_allclose(run(out, feed)[0], x @ initializer_arrays(out)["W"], rtol=1e-5, atol=1e-5)


def test_dynamic_weight_and_small_dtype() -> None:
    nodes = [oh.make_node("MatMul", ["X", "B"], ["Y"], name="mm")]
    model = _layers_model(nodes, {}, {"X": (2, 32), "B": (32, 32)})
    record = run_pass(model, "prune:min-size=0,keep-first-last=false").record
    assert record["modified"] is False
    assert record["stats"]["skipped"] == {"mm": "weight 'B' is not a constant initializer"}
    half = _layer("gemm", dtype=np.float16)
    result = run_pass(half, "prune:min-size=0,keep-first-last=false")
    out, record = result.model, result.record
    assert initializer_arrays(out)["W"].dtype == np.float16 and record["stats"]["sparsity"] == 0.5


def test_already_sparse_weights_leave_modified_false() -> None:
    result = run_pass(_layer("conv"), "prune:pattern=2:4,min-size=0,keep-first-last=false")
    out, first = result.model, result.record
    assert first["modified"] is True
    again = run_pass(out, "prune:pattern=2:4,min-size=0,keep-first-last=false").record
    assert again["modified"] is False and again["stats"]["weights_zeroed"] == 0
    assert again["stats"]["layers"]["layer"]["kept_magnitude"] == 1.0


@pytest.mark.parametrize(("spec", "sparsity"), [("sparsity=0.5", 0.5), ("pattern=2:4", 0.5)])
def test_digits_cnn_keeps_its_accuracy(spec: str, sparsity: float) -> None:
    result = onnxshrink.shrink(
        DIGITS,
        [f"prune:{spec},keep-first-last=false"],
        inputs=str(DIGITS_TEST),
    )
    assert result.report["verification"]["accuracy_candidate"] >= 0.95
    stats = result.report["passes"][0]["stats"]
    assert stats["sparsity"] == pytest.approx(sparsity, abs=1e-3)
    assert stats["layers_pruned"] == 5 and len(stats["skipped"]) == 3


@pytest.mark.parametrize(
    "options",
    [
        "sparsity=1",
        "sparsity=-0.1",
        "pattern=4:2",
        "pattern=0:4",
        "pattern=2-4",
        "scope=model",
        "criterion=l3",
        "allocation=fisher",
        "allocation=sensitivity,pattern=2:4",
        "allocation=sensitivity,scope=global",
        "allocation=sensitivity,sparsity=0.99",
        "allocation=sensitivity,rounds=0",
        "min-size=-1",
    ],
)
def test_bad_options_are_usage_errors(options: str) -> None:
    with pytest.raises(UsageError):
        onnxshrink.shrink(_layer("gemm"), [f"prune:{options}"], verify=False)


def test_allocate_meets_the_target_and_gives_cheap_layers_more() -> None:
    grid = np.array(sensitivity.GRID)
    curves = [
        sensitivity.Curve("cheap", 1000, 0.01 * grid),
        sensitivity.Curve("dear", 3000, grid**2),
        sensitivity.Curve("free", 500, np.zeros_like(grid)),
    ]
    chosen = sensitivity.allocate(curves, 0.6)
    total = sum(chosen[c.name] * c.size for c in curves) / sum(c.size for c in curves)
    assert total == pytest.approx(0.6, abs=1e-9)
    assert chosen["free"] == pytest.approx(sensitivity.MAX_SPARSITY)
    assert chosen["cheap"] == pytest.approx(sensitivity.MAX_SPARSITY)
    assert chosen["dear"] < 0.6
    assert all(0 <= value <= sensitivity.MAX_SPARSITY for value in chosen.values())


def test_allocate_takes_the_convex_hull_of_a_curve() -> None:
    # A curve that is flat to 0.5 then jumps: no sparsity in between is worth taking alone.
    step = np.where(np.array(sensitivity.GRID) <= 0.5, 0.0, 1.0)
    chosen = sensitivity.allocate([sensitivity.Curve("a", 100, step), sensitivity.Curve("b", 100, step)], 0.5)
    assert chosen["a"] + chosen["b"] == pytest.approx(1.0)
    assert {round(v, 6) for v in chosen.values()} == {0.5}


def _amplified_pair() -> onnx.ModelProto:
    """Y = 100 * (X @ Wa) + X @ Wb: the output is far more sensitive to Wa than to Wb."""
    rng = np.random.default_rng(3)
    nodes = [
        oh.make_node("MatMul", ["X", "Wa"], ["a"], name="amplified"),
        oh.make_node("Mul", ["a", "k"], ["a100"]),
        oh.make_node("MatMul", ["X", "Wb"], ["b"], name="plain"),
        oh.make_node("Add", ["a100", "b"], ["Y"]),
    ]
    weights = {
        "Wa": rng.standard_normal((64, 32)).astype(np.float32),
        "Wb": rng.standard_normal((64, 32)).astype(np.float32),
        "k": np.array(100, dtype=np.float32),
    }
    return _layers_model(nodes, weights, {"X": ("N", 64)})


def _calibration(samples: int = 48) -> dict[str, np.ndarray]:
    return {"X": np.random.default_rng(4).standard_normal((samples, 64)).astype(np.float32)}


def test_sensitivity_protects_the_layer_the_output_amplifies() -> None:
    spec = "prune:sparsity=0.5,keep-first-last=false,min-size=0,allocation=sensitivity"
    result = onnxshrink.shrink(_amplified_pair(), [spec], calibration=_calibration(), verify=False)
    stats = result.report["passes"][0]["stats"]
    layers = stats["layers"]
    assert layers["amplified"]["sparsity"] < 0.5 < layers["plain"]["sparsity"]
    assert stats["sparsity"] == pytest.approx(0.5, abs=1e-3)
    allocation = stats["allocation"]
    assert allocation["chosen"] == "sensitivity"
    errors = allocation["calibration_output_error"]
    assert errors["sensitivity"] < errors["uniform"]
    curve = layers["amplified"]["sensitivity"]
    assert len(curve) == len(allocation["sensitivity_grid"]) and curve[0] == 0.0 and curve[-1] > curve[1] > 0
    assert "seconds" not in allocation and result.report["passes"][0]["timings"]["allocation"] > 0


def test_sensitivity_needs_calibration_data() -> None:
    with pytest.raises(UsageError, match="needs calibration data"):
        onnxshrink.shrink(_amplified_pair(), ["prune:min-size=0,allocation=sensitivity"], verify=False)


def test_sensitivity_beats_uniform_on_the_digits_cnn() -> None:
    accuracy = {}
    for allocation in ("uniform", "sensitivity"):
        result = onnxshrink.shrink(
            DIGITS,
            [f"prune:sparsity=0.7,keep-first-last=false,allocation={allocation},samples=64"],
            calibration=str(DIGITS_CALIB),
            inputs=str(DIGITS_TEST),
        )
        accuracy[allocation] = result.report["verification"]["accuracy_candidate"]
        assert result.report["passes"][0]["stats"]["sparsity"] == pytest.approx(0.7, abs=2e-3)
    assert accuracy["sensitivity"] > accuracy["uniform"] + 0.03


def test_sensitivity_reads_a_single_use_reader_once() -> None:
    spec = "prune:sparsity=0.5,keep-first-last=false,min-size=0,allocation=sensitivity,rounds=2"
    result = onnxshrink.shrink(_amplified_pair(), [spec], calibration=OnceReader([_calibration()]), verify=False)
    assert result.report["passes"][0]["stats"]["allocation"]["chosen"] == "sensitivity"
    assert result.report["passes"][0]["stats"]["sparsity"] == pytest.approx(0.5, abs=1e-3)


def test_weight_in_a_constant_node_is_lifted_and_pruned() -> None:
    """paddle2onnx holds weights in Constant nodes: the pass lifts them into initializers itself."""
    weight = np.random.default_rng(5).standard_normal((32, 32)).astype(np.float32)
    nodes = [
        oh.make_node("Constant", [], ["B"], value=onnx.numpy_helper.from_array(weight, "B")),
        oh.make_node("MatMul", ["X", "B"], ["Y"], name="mm"),
    ]
    model = _layers_model(nodes, {}, {"X": (2, 32)})
    result = run_pass(model, "prune:min-size=0,keep-first-last=false")
    stats = result.record["stats"]
    assert result.modified is True and stats["constants_lifted"] == 1 and stats["sparsity"] == 0.5
    assert "skipped" not in stats
    assert [n.op_type for n in result.model.graph.node] == ["MatMul"]
    assert [t.name for t in result.model.graph.initializer] == ["B"]
    pruned = onnx.numpy_helper.to_array(result.model.graph.initializer[0])
    assert np.count_nonzero(pruned) == weight.size // 2 and np.all((pruned == 0) | (pruned == weight))


def test_weight_computed_from_a_constant_still_asks_for_fold_first() -> None:
    """Lifting is not enough when the weight is computed (Transpose of a Constant): fold does that."""
    weight = np.random.default_rng(5).standard_normal((32, 32)).astype(np.float32)
    nodes = [
        oh.make_node("Constant", [], ["C"], value=onnx.numpy_helper.from_array(weight, "C")),
        oh.make_node("Transpose", ["C"], ["B"], name="t"),
        oh.make_node("MatMul", ["X", "B"], ["Y"], name="mm"),
    ]
    model = _layers_model(nodes, {}, {"X": (2, 32)})
    result = run_pass(model, "prune:min-size=0,keep-first-last=false")
    stats = result.record["stats"]
    assert result.modified is False and stats["constants_lifted"] == 0
    assert stats["skipped"] == {"mm": "weight 'B' is computed from constants by Transpose 't': run fold first"}
    result = onnxshrink.shrink(model, ["fold", "prune:min-size=0,keep-first-last=false"], verify=False)
    assert result.report["passes"][1]["stats"]["sparsity"] == 0.5


LOOP_AND_FUNCTION = """<ir_version: 8, opset_import: ["" : 17, "local" : 1]>
g (float[2, 32] X) => (float[2, 32] Y, float[2, 32] Z) {
    trip = Constant <value = int64 {2}> ()
    cond = Constant <value = bool {1}> ()
    Y = Loop(trip, cond, X) <body = body (int64 i, bool c_in, float[2, 32] acc) => (bool c_out, float[2, 32] next) {
        c_out = Identity(c_in)
        [in_loop] next = MatMul(acc, W)
    }>
    Z = local.Dense(X, V)
}
<domain: "local", opset_import: ["" : 17]>
Dense (a, w) => (b) {
    b = MatMul(a, w)
}
"""


def test_a_loop_body_layer_is_pruned_and_a_function_layer_is_left_alone_with_a_reason() -> None:
    """Rule 1: a Loop body reads its weight from the main graph's initializers, so it is pruned; a
    function's weight comes in as a parameter (no initializer of its own), so the call site's is kept."""
    rng = np.random.default_rng(6)
    weights = {name: (rng.standard_normal((32, 32)) / 6).astype(np.float32) for name in ("W", "V")}
    model = parse_model(LOOP_AND_FUNCTION, initializers=weights)
    result = run_pass(model, "prune:sparsity=0.5,min-size=0,keep-first-last=false")
    out, record = result.model, result.record
    assert record["modified"] is True and set(record["stats"]["layers"]) == {"in_loop"}
    assert record["stats"]["skipped"] == {"Dense/MatMul#0": "in function 'Dense': function bodies hold no initializers"}
    pruned = initializer_arrays(out)
    assert np.count_nonzero(pruned["W"] == 0) == 512 and np.array_equal(pruned["V"], weights["V"])
    x = random_feed(model, seed=2)["X"]
    y, z = run(out, {"X": x})
    np.testing.assert_allclose(y, x @ pruned["W"] @ pruned["W"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(z, x @ weights["V"], rtol=1e-5, atol=1e-6)


def test_a_weight_that_is_also_a_graph_input_is_not_pruned() -> None:
    model = _layer("matmul")
    model.graph.input.append(oh.make_tensor_value_info("W", FLOAT, (32, 24)))
    result = run_pass(model, "prune:min-size=0,keep-first-last=false")
    out, record = result.model, result.record
    assert record["modified"] is False
    assert record["stats"]["skipped"] == {"layer": "weight 'W' is also a graph input, so callers may override it"}
    np.testing.assert_array_equal(initializer_arrays(out)["W"], initializer_arrays(model)["W"])
