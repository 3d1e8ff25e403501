"""``reconstruct`` on tiny ONNX-text graphs with perturbed/pruned weights, and on the digits CNN."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.helper
import onnx.numpy_helper
import onnx.parser
import onnx_ir as ir
import pytest
from helpers import DIGITS, DIGITS_CALIB, DIGITS_TEST, initializer_arrays, parse_model, run, run_pass

import onnxshrink
from onnxshrink.errors import UsageError
from onnxshrink.passes.reconstruct import ReconstructOptions, ReconstructPass, augment, matrices, output_error
from onnxshrink.passes.reconstruct.least_squares import (
    NormalEquations,
    increasing_match,
    kept_columns,
    matched_channels,
    solve,
)
from onnxshrink.spec import PassSpec

# name: (graph text, weight shapes, per-sample input shape). Weights are graph inputs in the text
# and become initializers in _model.
LAYERS: dict[str, tuple[str, dict[str, tuple[int, ...]], tuple[int, ...]]] = {
    "conv-pads-strides": (
        "(float[N,4,7,7] x, float[6,4,3,3] W, float[6] B) => (float[N,6,4,4] y)"
        "{ y = Conv<pads=[1,1,1,1], strides=[2,2]>(x, W, B) }",
        {"W": (6, 4, 3, 3), "B": (6,)},
        (4, 7, 7),
    ),
    "conv-dilations-no-bias": (
        "(float[N,4,7,7] x, float[6,4,3,3] W) => (float[N,6,5,4] y){ y = Conv<dilations=[2,2], pads=[2,1,0,0]>(x, W) }",
        {"W": (6, 4, 3, 3)},
        (4, 7, 7),
    ),
    "conv-groups": (
        "(float[N,4,5,5] x, float[6,2,3,3] W, float[6] B) => (float[N,6,5,5] y)"
        "{ y = Conv<group=2, pads=[1,1,1,1]>(x, W, B) }",
        {"W": (6, 2, 3, 3), "B": (6,)},
        (4, 5, 5),
    ),
    "conv-depthwise-same": (
        "(float[N,4,6,6] x, float[4,1,3,3] W) => (float[N,4,3,3] y)"
        '{ y = Conv<group=4, auto_pad="SAME_UPPER", strides=[2,2]>(x, W) }',
        {"W": (4, 1, 3, 3)},
        (4, 6, 6),
    ),
    "conv-1d": (
        "(float[N,3,9] x, float[5,3,3] W, float[5] B) => (float[N,5,4] y) { y = Conv<strides=[2]>(x, W, B) }",
        {"W": (5, 3, 3), "B": (5,)},
        (3, 9),
    ),
    "conv-transpose": (
        "(float[N,4,5,5] x, float[4,3,3,3] W, float[3] B) => (float[N,3,10,9] y)"
        "{ y = ConvTranspose<strides=[2,2], pads=[1,0,1,2], output_padding=[1,0]>(x, W, B) }",
        {"W": (4, 3, 3, 3), "B": (3,)},
        (4, 5, 5),
    ),
    "conv-transpose-groups-dilations": (
        "(float[N,4,5,5] x, float[4,2,3,2] W) => (float[N,4,5,9] y)"
        "{ y = ConvTranspose<group=2, strides=[1,2], dilations=[2,1], pads=[2,0,2,1]>(x, W) }",
        {"W": (4, 2, 3, 2)},
        (4, 5, 5),
    ),
    "gemm-transb": (
        "(float[N,12] x, float[5,12] W, float[5] C) => (float[N,5] y) { y = Gemm<transB=1>(x, W, C) }",
        {"W": (5, 12), "C": (5,)},
        (12,),
    ),
    "gemm-transa-alpha-beta": (
        "(float[N,12] x, float[12,5] W, float[1,5] C) => (float[N,5] y)"
        "{ t = Transpose<perm=[1,0]>(x)\n y = Gemm<transA=1, alpha=0.5, beta=2.0>(t, W, C) }",
        {"W": (12, 5), "C": (1, 5)},
        (12,),
    ),
    "gemm-fixed-c": (
        "(float[N,12] x, float[12,5] W, float[1] C) => (float[N,5] y) { y = Gemm(x, W, C) }",
        {"W": (12, 5), "C": (1,)},
        (12,),
    ),
    "matmul-3d": (
        "(float[N,3,12] x, float[12,5] W) => (float[N,3,5] y) { y = MatMul(x, W) }",
        {"W": (12, 5)},
        (3, 12),
    ),
}


def _model(text: str, weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    """The graph ``text`` with its weight inputs turned into initializers holding ``weights``."""
    model = parse_model(f"g {text}", check=False)  # checked once the weights are initializers
    keep = [v for v in model.graph.input if v.name not in weights]
    del model.graph.input[:]
    model.graph.input.extend(keep)
    model.graph.initializer.extend(onnx.numpy_helper.from_array(a, n) for n, a in weights.items())
    onnx.checker.check_model(model, full_check=True)
    return model


def _data(shape: tuple[int, ...], samples: int, seed: int) -> dict[str, np.ndarray]:
    """Correlated inputs, as real activations are: low rank along every sample axis,
    plus a little noise. With white inputs a pruned weight has nothing to compensate with."""
    rng, structure = np.random.default_rng(seed), np.random.default_rng(100)
    x = rng.standard_normal((samples, *shape))
    for axis in range(1, len(shape) + 1):
        size = shape[axis - 1]
        rank = max(1, size // 2)
        mix = structure.standard_normal((rank, size)) / np.sqrt(rank)
        x = np.moveaxis(np.moveaxis(x, axis, -1)[..., :rank] @ mix, -1, axis)
    x = x + 0.1 * rng.standard_normal(x.shape)
    return {"x": x.astype(np.float32)}


def _teacher_and_student(case: str, keep_fraction: float, noise: float) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    text, shapes, _ = LAYERS[case]
    rng = np.random.default_rng(0)
    teacher = {n: rng.standard_normal(s).astype(np.float32) for n, s in shapes.items()}
    student = {}
    for name, array in teacher.items():
        if name == "C" and case == "gemm-fixed-c":
            student[name] = array  # this C is not refit (not one value per output column)
            continue
        perturbed = array + noise * rng.standard_normal(array.shape).astype(np.float32)
        if name == "W":
            perturbed *= rng.random(array.shape) < keep_fraction
        student[name] = perturbed.astype(np.float32)
    return _model(text, teacher), _model(text, student)


def _relative_error(model: onnx.ModelProto, teacher: onnx.ModelProto, feed: dict[str, np.ndarray]) -> float:
    want, got = run(teacher, feed)[0], run(model, feed)[0]
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


@pytest.mark.parametrize("case", sorted(LAYERS))
def test_dense_refit_recovers_the_teacher_weights(case: str) -> None:
    teacher, student = _teacher_and_student(case, keep_fraction=1.0, noise=0.5)
    result = run_pass(
        student, PassSpec("reconstruct", {"ridge": 0.0}), calibration=_data(LAYERS[case][2], 64, 1), reference=teacher
    )
    out, stats, modified = result.model, result.stats, result.modified
    assert modified is True and stats["layers_refit"] == 1
    want, got = initializer_arrays(teacher), initializer_arrays(out)
    np.testing.assert_allclose(got["W"], want["W"], rtol=1e-3, atol=1e-3)
    bias = next((n for n in ("B", "C") if n in want), None)
    if bias is not None:
        np.testing.assert_allclose(got[bias], want[bias], rtol=1e-3, atol=1e-3)
    held_out = _data(LAYERS[case][2], 8, 2)
    assert _relative_error(out, teacher, held_out) < 1e-4 < _relative_error(student, teacher, held_out)
    (entry,) = stats["layers"].values()
    assert entry["error_after"] < 1e-4 < entry["error_before"] and "seconds" not in entry


@pytest.mark.parametrize("case", sorted(LAYERS))
@pytest.mark.parametrize("method", ["lstsq", "obs"])
def test_pruned_refit_keeps_the_mask_and_lowers_the_error(case: str, method: str) -> None:
    teacher, student = _teacher_and_student(case, keep_fraction=0.5, noise=0.3)
    result = run_pass(
        student,
        PassSpec("reconstruct", {"method": method}),
        calibration=_data(LAYERS[case][2], 64, 1),
        reference=teacher,
    )
    out, stats, modified = result.model, result.stats, result.modified
    assert modified is True
    before, after = initializer_arrays(student)["W"], initializer_arrays(out)["W"]
    np.testing.assert_array_equal(after == 0, before == 0)
    assert not np.array_equal(after, before)
    held_out = _data(LAYERS[case][2], 16, 2)
    before_error, after_error = _relative_error(student, teacher, held_out), _relative_error(out, teacher, held_out)
    assert after_error < before_error
    if method == "lstsq" and case != "conv-depthwise-same":  # 9 weights per filter leave little to compensate
        assert after_error < 0.8 * before_error
    (entry,) = stats["layers"].values()
    assert entry["method"] == method and entry["error_after"] < entry["error_before"]
    assert [o.name for o in out.graph.output] == ["y"]


def test_exact_masked_solve_is_no_worse_than_obs() -> None:
    rng = np.random.default_rng(3)
    x = rng.standard_normal((200, 1, 20))
    y = x @ rng.standard_normal((20, 6))
    equations = NormalEquations.zeros(1, 20, 6)
    equations.add(x[:120], y[:120])
    equations.add(x[120:], y[120:])
    current = rng.standard_normal((1, 6, 20))
    keep = rng.random(current.shape) < 0.4
    exact = solve(equations, current, keep, 1e-6, "lstsq")
    obs = solve(equations, current, keep, 1e-6, "obs")
    assert np.all(exact[~keep] == 0) and np.all(obs[~keep] == 0)
    assert equations.relative_error(exact) <= equations.relative_error(obs) + 1e-9
    assert equations.relative_error(obs) < equations.relative_error(current * keep)


@pytest.mark.parametrize("method", ["lstsq", "obs"])
def test_rank_deficient_inputs_without_ridge_still_solve_and_keep_the_mask(method: str) -> None:
    rng = np.random.default_rng(5)
    x = rng.standard_normal((50, 1, 4)) @ rng.standard_normal((4, 8))  # rank 4 of 8 columns
    equations = NormalEquations.zeros(1, 8, 3)
    equations.add(x, x @ rng.standard_normal((8, 3)))
    current = rng.standard_normal((1, 3, 8))
    keep = rng.random(current.shape) < 0.5
    refit = solve(equations, current, keep, 0.0, method)
    assert np.all(np.isfinite(refit)) and np.all(refit[~keep] == 0)
    assert equations.relative_error(refit) < equations.relative_error(current * keep)


def test_a_conv_without_bias_gets_one_and_bias_false_leaves_it_out() -> None:
    teacher, student = _teacher_and_student("conv-dilations-no-bias", keep_fraction=0.5, noise=0.3)
    out = run_pass(
        student, "reconstruct", calibration=_data(LAYERS["conv-dilations-no-bias"][2], 32, 1), reference=teacher
    ).model
    (node,) = out.graph.node
    assert len(node.input) == 3 and node.input[2] in initializer_arrays(out)
    result = run_pass(
        student,
        PassSpec("reconstruct", {"bias": False}),
        calibration=_data(LAYERS["conv-dilations-no-bias"][2], 32, 1),
        reference=teacher,
    )
    out, modified = result.model, result.modified
    assert modified is True and len(out.graph.node[0].input) == 2


def _two_layer_teacher_and_half_pruned_student() -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """MatMul-Relu-MatMul with random weights, and the same model with half of each weight zeroed."""
    text = (
        "(float[N,12] x, float[12,10] W1, float[10,5] W2) => (float[N,5] y)"
        "{ h = MatMul(x, W1)\n r = Relu(h)\n y = MatMul(r, W2) }"
    )
    rng = np.random.default_rng(0)
    dense = {"W1": rng.standard_normal((12, 10)), "W2": rng.standard_normal((10, 5))}
    pruned = {n: (w * (rng.random(w.shape) < 0.5)).astype(np.float32) for n, w in dense.items()}
    return _model(text, {n: w.astype(np.float32) for n, w in dense.items()}), _model(text, pruned)


def test_layers_fit_in_stages_so_later_layers_see_earlier_refits() -> None:
    teacher, student = _two_layer_teacher_and_half_pruned_student()
    result = run_pass(student, "reconstruct", calibration=_data((12,), 128, 1), reference=teacher)
    out, stats = result.model, result.stats
    assert stats["stages"] == 2 and stats["layers_refit"] == 2
    held_out = _data((12,), 32, 2)
    assert _relative_error(out, teacher, held_out) < 0.8 * _relative_error(student, teacher, held_out)
    # Fitting the second layer on the refit first layer beats fitting it on the pruned one.
    only_second = run_pass(
        student,
        PassSpec("reconstruct", {"exclude": ("MatMul#0",)}),
        calibration=_data((12,), 128, 1),
        reference=teacher,
    ).model
    assert _relative_error(out, teacher, held_out) < _relative_error(only_second, teacher, held_out)


def test_a_model_that_matches_its_teacher_is_left_alone() -> None:
    teacher, _ = _teacher_and_student("gemm-transb", keep_fraction=1.0, noise=0.0)
    result = run_pass(teacher, "reconstruct", calibration=_data((12,), 16, 1), reference=teacher)
    out, stats, modified = result.model, result.stats, result.modified
    assert modified is False and stats["layers_refit"] == 0
    assert "already matches" in stats["skipped"]["Gemm#0"]
    np.testing.assert_array_equal(initializer_arrays(out)["W"], initializer_arrays(teacher)["W"])


def test_include_exclude_shared_weights_and_missing_teacher_points_are_skipped_with_reasons() -> None:
    text = (
        "(float[N,12] x, float[12,12] W, float[12,5] V) => (float[N,5] y)"
        "{ a = MatMul(x, W)\n b = MatMul(a, W)\n y = MatMul(b, V) }"
    )
    rng = np.random.default_rng(0)
    weights = {
        "W": rng.standard_normal((12, 12)).astype(np.float32),
        "V": rng.standard_normal((12, 5)).astype(np.float32),
    }
    teacher = _model(text, weights)
    student = _model(text, {**weights, "V": weights["V"] * 0.5})
    result = run_pass(
        student, PassSpec("reconstruct", {"exclude": ("MatMul",)}), calibration=_data((12,), 16, 1), reference=teacher
    )
    stats, modified = result.stats, result.modified
    assert modified is False and set(stats["skipped"].values()) == {"excluded"}
    result = run_pass(student, "reconstruct", calibration=_data((12,), 16, 1), reference=teacher)
    stats, modified = result.stats, result.modified
    assert modified is True and stats["layers_refit"] == 1
    assert "read by other nodes" in stats["skipped"]["MatMul#0"]
    renamed = onnx.ModelProto()
    renamed.CopyFrom(teacher)
    renamed.graph.node[2].output[0] = "z"
    renamed.graph.output[0].name = "z"
    result = run_pass(student, "reconstruct", calibration=_data((12,), 16, 1), reference=renamed)
    stats, modified = result.stats, result.modified
    assert modified is False and "no value 'y' in the input model" in stats["skipped"]["MatMul#2"]


def test_fused_conv_is_fit_to_the_batchnorm_output_of_the_input_model() -> None:
    text = (
        "(float[N,4,6,6] x, float[8,4,3,3] W, float[8] s, float[8] b, float[8] m, float[8] v) => (float[N,8,6,6] y)"
        "{ c = Conv<pads=[1,1,1,1]>(x, W)\n n = BatchNormalization(c, s, b, m, v)\n y = Relu(n) }"
    )
    rng = np.random.default_rng(0)
    weights = {
        "W": rng.standard_normal((8, 4, 3, 3)).astype(np.float32),
        "s": rng.uniform(0.5, 2, 8).astype(np.float32),
        "b": rng.standard_normal(8).astype(np.float32),
        "m": rng.standard_normal(8).astype(np.float32),
        "v": rng.uniform(0.5, 2, 8).astype(np.float32),
    }
    model = _model(text, weights)
    calib = _data((4, 6, 6), 32, 1)
    pipeline = ["fuse-bn", "prune:sparsity=0.6,min-size=0,keep-first-last=false"]
    pruned = onnxshrink.shrink(model, pipeline, calibration=calib, verify=False)
    result = onnxshrink.shrink(model, [*pipeline, "reconstruct"], calibration=calib, verify=False)
    stats = result.report["passes"][-1]["stats"]
    assert [n.op_type for n in result.model.graph] == ["Conv", "Relu"] and stats["layers_refit"] == 1
    # fuse-bn keeps the Conv's output name 'c'; its teacher point is the BatchNormalization output.
    assert next(iter(result.model.graph)).outputs[0].name == "c"
    assert stats["layers"]["Conv#0"]["teacher_point"] == "n"
    held_out = _data((4, 6, 6), 8, 2)
    assert _relative_error(result.to_proto(), model, held_out) < 0.8 * _relative_error(
        pruned.to_proto(), model, held_out
    )


def test_no_calibration_data_and_bad_options_are_one_line_usage_errors() -> None:
    teacher, student = _teacher_and_student("gemm-transb", keep_fraction=0.5, noise=0.0)
    with pytest.raises(UsageError, match="pass 'reconstruct' needs calibration data"):
        run_pass(student, "reconstruct", calibration=None, reference=teacher)
    with pytest.raises(UsageError, match=r"^reconstruct: option ridge: must be >= 0.0, got -1.0$"):
        onnxshrink.shrink(teacher, ["reconstruct:ridge=-1"], calibration=_data((12,), 4, 1))
    with pytest.raises(UsageError, match=r"^reconstruct: option ridge: 'much' is not a number$"):
        ReconstructPass(ReconstructOptions(ridge="much"))  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="method"):
        onnxshrink.shrink(teacher, ["reconstruct:method=magic"], calibration=_data((12,), 4, 1))


def test_digits_recovers_accuracy_after_90_percent_pruning() -> None:
    prune = "prune:sparsity=0.9,keep-first-last=false"
    alone = onnxshrink.shrink(DIGITS, [prune], calibration=DIGITS_CALIB, inputs=DIGITS_TEST)
    refit = onnxshrink.shrink(DIGITS, [prune, "reconstruct"], calibration=DIGITS_CALIB, inputs=DIGITS_TEST)
    before = alone.report["verification"]["accuracy_candidate"]
    after = refit.report["verification"]["accuracy_candidate"]
    assert after >= 0.95 and after > before + 0.3
    pruned, refit_weights = initializer_arrays(alone.to_proto()), initializer_arrays(refit.to_proto())
    for name, weight in pruned.items():
        if name.endswith("weight") and np.mean(weight == 0) > 0.5:
            np.testing.assert_array_equal(refit_weights[name] == 0, weight == 0, err_msg=name)
    stats = refit.report["passes"][-1]["stats"]
    assert stats["layers_refit"] >= 6
    assert all(e["error_after"] < e["error_before"] for e in stats["layers"].values() if e["refit"])


def test_refits_that_make_the_model_outputs_worse_are_all_reverted() -> None:
    # The student's second layer compensates the first one's change exactly: its output already
    # equals the teacher's. Refitting only the first layer to its teacher point breaks that.
    text = "(float[N,8] x, float[8,8] W1, float[8,5] W2) => (float[N,5] y) { h = Gemm(x, W1)\n y = MatMul(h, W2) }"
    rng = np.random.default_rng(0)
    w1, w2 = rng.standard_normal((8, 8)), rng.standard_normal((8, 5))
    changed = w1 + 0.5 * rng.standard_normal((8, 8))
    compensating = np.linalg.solve(changed, w1 @ w2)
    teacher = _model(text, {"W1": w1.astype(np.float32), "W2": w2.astype(np.float32)})
    student = _model(text, {"W1": changed.astype(np.float32), "W2": compensating.astype(np.float32)})
    result = run_pass(
        student, PassSpec("reconstruct", {"exclude": ("MatMul",)}), calibration=_data((8,), 64, 1), reference=teacher
    )
    out, stats, modified = result.model, result.stats, result.modified
    assert modified is False and stats["layers_refit"] == 0 and "reverted" in stats
    assert stats["output_error_after"] > stats["output_error_before"]
    assert stats["layers"]["Gemm#0"]["error_after"] < stats["layers"]["Gemm#0"]["error_before"]
    assert "reverted" in stats["skipped"]["Gemm#0"]
    assert out.SerializeToString() == ir.serde.serialize_model(ir.serde.deserialize_model(student)).SerializeToString()


def test_large_conv_batches_are_split_without_changing_the_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    teacher, student = _teacher_and_student("conv-pads-strides", keep_fraction=0.5, noise=0.3)
    data = _data(LAYERS["conv-pads-strides"][2], 32, 1)
    whole = run_pass(student, "reconstruct", calibration=data, reference=teacher).model
    monkeypatch.setattr(matrices, "_ROWS_BUDGET", 4 * 7 * 7 * 9 * 3)  # three samples per piece
    result = run_pass(student, "reconstruct", calibration=data, reference=teacher)
    split, stats = result.model, result.stats
    (entry,) = stats["layers"].values()
    assert entry["rows"] == 32 * 4 * 4
    np.testing.assert_allclose(initializer_arrays(split)["W"], initializer_arrays(whole)["W"], rtol=1e-6, atol=1e-7)


def test_bias_false_keeps_an_existing_bias_and_fits_the_weights_around_it() -> None:
    text, shapes, sample = LAYERS["conv-pads-strides"]
    rng = np.random.default_rng(0)
    teacher_weights = {n: rng.standard_normal(s).astype(np.float32) for n, s in shapes.items()}
    noisy = teacher_weights["W"] + 0.5 * rng.standard_normal(shapes["W"]).astype(np.float32)
    teacher = _model(text, teacher_weights)
    student = _model(text, {**teacher_weights, "W": noisy})
    result = run_pass(
        student,
        PassSpec("reconstruct", {"bias": False, "ridge": 0.0}),
        calibration=_data(sample, 64, 1),
        reference=teacher,
    )
    out, modified = result.model, result.modified
    assert modified is True
    np.testing.assert_array_equal(initializer_arrays(out)["B"], teacher_weights["B"])
    np.testing.assert_allclose(initializer_arrays(out)["W"], teacher_weights["W"], rtol=1e-3, atol=1e-3)


def test_a_teacher_value_of_another_shape_is_skipped_with_a_reason() -> None:
    text = "(float[N,4,5,5] x, float[{0},4,3,3] W) => (float[N,{0},3,3] y) {{ y = Conv(x, W) }}"
    rng = np.random.default_rng(0)
    teacher = _model(text.format(6), {"W": rng.standard_normal((6, 4, 3, 3)).astype(np.float32)})
    student = _model(text.format(8), {"W": rng.standard_normal((8, 4, 3, 3)).astype(np.float32)})
    result = run_pass(student, "reconstruct", calibration=_data((4, 5, 5), 8, 1), reference=teacher)
    stats, modified = result.stats, result.modified
    assert modified is False
    assert "has shape [8, 6, 3, 3], not [8, 8, 3, 3]" in stats["skipped"]["Conv#0"]


def test_a_weight_behind_dequantize_linear_is_refit_on_its_integer_grid() -> None:
    student_text = (
        "(float[N,4,7,7] x, uint8[6,4,3,3] Q, float[6] S, uint8[6] Z, float[6] B) => (float[N,6,7,7] y)"
        "{ W = DequantizeLinear<axis=0>(Q, S, Z)\n y = Conv<pads=[1,1,1,1]>(x, W, B) }"
    )
    teacher_text = (
        "(float[N,4,7,7] x, float[6,4,3,3] W, float[6] B) => (float[N,6,7,7] y) { y = Conv<pads=[1,1,1,1]>(x, W, B) }"
    )
    rng = np.random.default_rng(0)
    weight, bias = rng.standard_normal((6, 4, 3, 3)), rng.standard_normal(6)
    perturbed = (weight + 0.3 * rng.standard_normal(weight.shape)) * (rng.random(weight.shape) < 0.5)
    scale = np.abs(perturbed).reshape(6, -1).max(axis=1) / 100
    steps = np.rint(perturbed / scale[:, None, None, None]) + 128
    grid = {"S": scale.astype(np.float32), "Z": np.full(6, 128, np.uint8), "B": bias.astype(np.float32)}
    teacher = _model(teacher_text, {"W": weight.astype(np.float32), "B": bias.astype(np.float32)})
    student = _model(student_text, {"Q": steps.astype(np.uint8), **grid})
    result = run_pass(student, "reconstruct", calibration=_data((4, 7, 7), 64, 1), reference=teacher)
    out, stats, modified = result.model, result.stats, result.modified
    assert modified is True and stats["layers_refit"] == 1
    before, after = initializer_arrays(student), initializer_arrays(out)
    assert after["Q"].dtype == np.uint8 and not np.array_equal(after["Q"], before["Q"])
    # Pruned weights stay at the zero point; a kept one may round onto it too.
    assert np.all(after["Q"][before["Q"] == 128] == 128)
    assert np.mean(after["Q"] == 128) < np.mean(before["Q"] == 128) + 0.02
    np.testing.assert_array_equal(after["S"], before["S"])
    np.testing.assert_array_equal(after["Z"], before["Z"])
    held_out = _data((4, 7, 7), 16, 2)
    assert _relative_error(out, teacher, held_out) < 0.8 * _relative_error(student, teacher, held_out)


def test_a_layer_that_lost_output_channels_is_fit_to_the_teacher_channels_it_kept() -> None:
    text = (
        "(float[N,4,6,6] x, float[{0},4,3,3] W1, float[5,{0},3,3] W2) => (float[N,5,6,6] y)"
        "{{ h = Conv<pads=[1,1,1,1]>(x, W1)\n r = Relu(h)\n y = Conv<pads=[1,1,1,1]>(r, W2) }}"
    )
    rng = np.random.default_rng(0)
    w1, w2 = rng.standard_normal((8, 4, 3, 3)), rng.standard_normal((5, 8, 3, 3))
    kept = [0, 2, 3, 5, 6, 7]
    noisy = w1[kept] + 0.3 * rng.standard_normal((6, 4, 3, 3))
    teacher = _model(text.format(8), {"W1": w1.astype(np.float32), "W2": w2.astype(np.float32)})
    student = _model(text.format(6), {"W1": noisy.astype(np.float32), "W2": w2[:, kept].astype(np.float32)})
    result = run_pass(
        student, PassSpec("reconstruct", {"ridge": 0.0}), calibration=_data((4, 6, 6), 64, 1), reference=teacher
    )
    out, stats, modified = result.model, result.stats, result.modified
    assert modified is True and stats["layers"]["Conv#0"]["teacher_channels"] == kept
    np.testing.assert_allclose(initializer_arrays(out)["W1"], w1[kept], atol=1e-3)
    held_out = _data((4, 6, 6), 16, 2)
    assert _relative_error(out, teacher, held_out) < 0.8 * _relative_error(student, teacher, held_out)


def test_kept_columns_follow_the_most_similar_increasing_sequence() -> None:
    rng = np.random.default_rng(4)
    x = rng.standard_normal((300, 1, 10))
    teacher = rng.standard_normal((9, 10))
    equations = NormalEquations.zeros(1, 10, 9)
    equations.add(x, (x[:, 0] @ teacher.T)[:, None, :])
    kept = np.array([1, 2, 4, 7, 8])
    student = teacher[kept] + 0.2 * rng.standard_normal((5, 10))
    np.testing.assert_array_equal(kept_columns(equations, student[None]), kept)
    assert kept_columns(equations, np.zeros((1, 5, 10))) is None


NESTED = """<ir_version: 8, opset_import: ["" : 17, "local" : 1]>
g (float[N, 12] x) => (float[N, 12] y, float[N, 12] z, float[N, 12] f) {
    h = MatMul(x, W0)
    flag = Constant <value = bool {1}> ()
    y = If(flag) <
        then_branch = then_graph () => (float[N, 12] a) { a = MatMul(h, W1) },
        else_branch = else_graph () => (float[N, 12] b) { b = Identity(h) }
    >
    trip = Constant <value = int64 {1}> ()
    z = Loop(trip, flag, h) <body = body (int64 i, bool c_in, float[N, 12] acc) => (bool c_out, float[N, 12] next) {
        c_out = Identity(c_in)
        next = MatMul(acc, W2)
    }>
    f = local.Dense(h, W3)
}
<domain: "local", opset_import: ["" : 17]>
Dense (a, w) => (b) {
    b = MatMul(a, w)
}
"""


def _nested(weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    return parse_model(NESTED, initializers=weights)


def test_layers_in_if_and_loop_bodies_and_functions_are_left_alone_with_reasons() -> None:
    rng = np.random.default_rng(0)
    teacher = {n: (rng.standard_normal((12, 12)) / 3).astype(np.float32) for n in ("W0", "W1", "W2", "W3")}
    student = {
        n: w + (0.5 if n == "W0" else 0.01) * rng.standard_normal(w.shape).astype(np.float32)
        for n, w in teacher.items()
    }
    result = run_pass(_nested(student), "reconstruct", calibration=_data((12,), 64, 1), reference=_nested(teacher))
    out, stats, modified = result.model, result.stats, result.modified
    assert modified is True and stats["layers_refit"] == 1 and set(stats["layers"]) == {"MatMul#0"}
    assert stats["skipped"] == {
        "then_graph/MatMul#0": "in subgraph 'then_graph': reconstruct refits main-graph layers only",
        "body/MatMul#1": "in subgraph 'body': reconstruct refits main-graph layers only",
        "Dense/MatMul#0": "in function 'Dense': reconstruct refits main-graph layers only",
    }
    refit = initializer_arrays(out)
    for name in ("W1", "W2", "W3"):
        np.testing.assert_array_equal(refit[name], student[name])
    held_out = _data((12,), 16, 2)
    want, got, old = run(_nested(teacher), held_out), run(out, held_out), run(_nested(student), held_out)
    for w, g, o in zip(want, got, old, strict=True):
        assert np.linalg.norm(g - w) < 0.5 * np.linalg.norm(o - w)


def test_timings_name_the_capture_and_each_refit_and_stay_out_of_the_stats() -> None:
    teacher, student = _teacher_and_student("gemm-transb", keep_fraction=0.5, noise=0.3)
    result = run_pass(student, "reconstruct", calibration=_data((12,), 16, 1), reference=teacher)
    timings = result.record["timings"]
    assert set(timings) == {"capture", "refit.Gemm#0"} and all(t > 0 for t in timings.values())
    assert not any("seconds" in key for key in result.stats)


def test_a_bias_that_is_also_a_graph_input_leaves_its_layer_alone() -> None:
    """Policy of onnxshrink.ir.constants: callers may override such a bias, so its stored value is no
    target offset (before, the layer was refit against the stored default)."""
    teacher, student = _teacher_and_student("gemm-transb", keep_fraction=0.5, noise=0.3)
    for model in (teacher, student):
        model.graph.input.append(onnx.helper.make_tensor_value_info("C", onnx.TensorProto.FLOAT, (5,)))
    result = run_pass(student, "reconstruct", calibration=_data((12,), 16, 1), reference=teacher)
    out, stats, modified = result.model, result.stats, result.modified
    assert modified is False and stats["skipped"] == {
        "Gemm#0": "bias 'C' is also a graph input, so callers may override it"
    }
    np.testing.assert_array_equal(initializer_arrays(out)["W"], initializer_arrays(student)["W"])


def test_streamed_normal_equations_give_the_dense_least_squares_solution() -> None:
    # The teacher is not linear in x, so the fit is a true least-squares problem, streamed over
    # two calibration batches (64 samples, batches of 32); ridge 0 must give numpy's lstsq.
    teacher_text = (
        "(float[N,3,6] x, float[6,4] T, float[6,4] V) => (float[N,3,4] y)"
        "{ a = MatMul(x, T)\n q = Mul(x, x)\n b = MatMul(q, V)\n y = Add(a, b) }"
    )
    rng = np.random.default_rng(7)
    teacher = _model(teacher_text, {n: rng.standard_normal((6, 4)).astype(np.float32) for n in ("T", "V")})
    student = _model(
        LAYERS["matmul-3d"][0].replace("12", "6").replace(",5]", ",4]"),
        {"W": rng.standard_normal((6, 4)).astype(np.float32)},
    )
    feed = _data((3, 6), 64, 1)
    result = run_pass(student, PassSpec("reconstruct", {"ridge": 0.0}), calibration=feed, reference=teacher)
    x = feed["x"].astype(np.float64).reshape(-1, 6)
    y = run(teacher, feed)[0].astype(np.float64).reshape(-1, 4)
    dense = np.linalg.lstsq(x, y, rcond=None)[0]
    assert result.stats["layers_refit"] == 1
    np.testing.assert_allclose(initializer_arrays(result.model)["W"], dense, rtol=1e-4, atol=1e-5)


def test_order_single_fits_every_layer_from_one_data_pass() -> None:
    teacher, student = _two_layer_teacher_and_half_pruned_student()
    held_out = _data((12,), 32, 2)
    errors = {}
    for order in ("staged", "single"):
        spec = PassSpec("reconstruct", {"order": order})
        result = run_pass(student, spec, calibration=_data((12,), 128, 1), reference=teacher)
        assert result.stats["stages"] == 2 and result.stats["data_passes"] == (2 if order == "staged" else 1)
        assert result.stats["layers_refit"] == 2, result.stats
        errors[order] = _relative_error(result.model, teacher, held_out)
    assert errors["single"] < 0.8 * _relative_error(student, teacher, held_out)
    # Staged fits the second layer on the refit first one: at least as good on this model.
    assert errors["staged"] <= errors["single"] * 1.01


def test_order_single_fits_a_layer_that_lost_input_channels_on_the_teacher_channels_it_kept() -> None:
    # Hidden units 1, 4 and 6 removed (prune-channels) and the first layer's kept columns
    # perturbed: order=single reads the teacher's hidden units 0, 2, 3, 5, 7 as the second layer's
    # input (not the student's perturbed ones), so its refit is the least-squares solution on those.
    text = (
        "(float[N,6] x, float[6,{0}] W1, float[{0},4] W2) => (float[N,4] y)"
        "{{ h = MatMul(x, W1)\n r = Relu(h)\n y = MatMul(r, W2) }}"
    )
    rng = np.random.default_rng(3)
    w1, w2 = rng.standard_normal((6, 8)).astype(np.float32), rng.standard_normal((8, 4)).astype(np.float32)
    kept = [0, 2, 3, 5, 7]
    noisy = (w1[:, kept] + 0.3 * rng.standard_normal((6, 5))).astype(np.float32)
    teacher = _model(text.format(8), {"W1": w1, "W2": w2})
    student = _model(text.format(5), {"W1": noisy, "W2": w2[kept]})
    feed = _data((6,), 64, 1)
    result = run_pass(
        student, PassSpec("reconstruct", {"order": "single", "ridge": 0.0}), calibration=feed, reference=teacher
    )
    hidden = np.maximum(feed["x"].astype(np.float64) @ w1, 0)[:, kept]
    want = np.linalg.lstsq(hidden, run(teacher, feed)[0].astype(np.float64), rcond=None)[0]
    assert result.stats["layers_refit"] == 2
    assert result.stats["layers"]["MatMul#0"]["teacher_channels"] == kept
    np.testing.assert_allclose(initializer_arrays(result.model)["W2"], want, rtol=1e-4, atol=1e-4)


def test_order_single_leaves_a_layer_with_the_teachers_weights_and_input_alone() -> None:
    # The first layer holds the teacher's W1 columns and bias entries exactly and reads the
    # teacher's own input: it is not accumulated, and the second is still fit.
    text = (
        "(float[N,6] x, float[{0},6] W1, float[{0}] B1, float[4,{0}] W2) => (float[N,4] y)"
        "{{ h = Gemm<transB=1>(x, W1, B1)\n r = Relu(h)\n y = Gemm<transB=1>(r, W2) }}"
    )
    rng = np.random.default_rng(6)
    w1, b1, w2 = (rng.standard_normal(s).astype(np.float32) for s in ((8, 6), (8,), (4, 8)))
    kept = [1, 2, 4, 5, 7]
    teacher = _model(text.format(8), {"W1": w1, "B1": b1, "W2": w2})
    student = _model(text.format(5), {"W1": w1[kept], "B1": b1[kept], "W2": w2[:, kept]})
    spec = PassSpec("reconstruct", {"order": "single"})
    stats = run_pass(student, spec, calibration=_data((6,), 64, 1), reference=teacher).stats
    assert "its weights are the input model's" in stats["skipped"]["Gemm#0"], stats["skipped"]
    second = stats["layers"]["Gemm#2"]  # the Relu is node 1
    assert stats["layers_refit"] == 1 and second["error_after"] < 0.8 * second["error_before"]
    perturbed = _model(text.format(5), {"W1": w1[kept] + 0.1, "B1": b1[kept], "W2": w2[:, kept]})
    stats = run_pass(perturbed, spec, calibration=_data((6,), 64, 1), reference=teacher).stats
    assert "Gemm#0" in stats["layers"] and "Gemm#0" not in stats.get("skipped", {})


def test_the_final_check_gives_the_same_errors_without_the_kept_teacher_outputs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    teacher, student = _two_layer_teacher_and_half_pruned_student()
    kept = run_pass(student, "reconstruct", calibration=_data((12,), 96, 1), reference=teacher).stats
    monkeypatch.setattr(output_error, "KEPT_OUTPUTS", 0)
    rerun = run_pass(student, "reconstruct", calibration=_data((12,), 96, 1), reference=teacher).stats
    assert kept["output_error_after"] < kept["output_error_before"]
    for key in ("output_error_before", "output_error_after"):
        assert kept[key] == pytest.approx(rerun[key], rel=1e-12)


def test_increasing_match_takes_each_rows_best_column_only_when_those_increase() -> None:
    ones = np.ones(4)
    np.testing.assert_array_equal(
        increasing_match(np.array([[0.9, 0.1, 0, 0], [0, 0, 0.8, 0.1]]), ones[:2], ones), [0, 2]
    )
    # Both rows prefer column 2; the best increasing pair is (2, 3): 0.9 + 0.3 > 0.2 + 0.95.
    clash = np.array([[0.1, 0.2, 0.9, 0.0], [0.0, 0.1, 0.95, 0.3]])
    np.testing.assert_array_equal(increasing_match(clash, ones[:2], ones), [2, 3])


def test_matched_channels_find_the_kept_channels_along_an_axis() -> None:
    rng = np.random.default_rng(5)
    teacher = rng.standard_normal((16, 9, 3, 3))
    kept = np.array([0, 3, 4, 8])
    student = teacher[:, kept] + 0.3 * rng.standard_normal((16, 4, 3, 3))
    np.testing.assert_array_equal(matched_channels(student, teacher, 1), kept)
    np.testing.assert_array_equal(matched_channels(np.moveaxis(student, 1, -1), np.moveaxis(teacher, 1, -1), 3), kept)
    assert matched_channels(np.zeros_like(student), teacher, 1) is None


def test_shifts_move_each_image_by_one_pixel_and_repeat_other_inputs() -> None:
    images = np.arange(1, 10, dtype=np.float32).reshape(1, 1, 3, 3)
    np.testing.assert_array_equal(augment.shifted(images, 1, 0)[0, 0], [[0, 0, 0], [1, 2, 3], [4, 5, 6]])
    np.testing.assert_array_equal(augment.shifted(images, -1, 1)[0, 0], [[0, 4, 5], [0, 7, 8], [0, 0, 0]])
    feed = augment.shifts({"x": np.concatenate([images, 2 * images]), "ids": np.array([[7], [8]], np.int64)})
    assert feed["x"].shape == (18, 1, 3, 3) and feed["ids"].ravel().tolist() == [7, 8] * 9
    np.testing.assert_array_equal(feed["x"][:2], np.concatenate([images, 2 * images]))  # the images themselves first
    moved = {(int(dy), int(dx)) for dy, dx in augment.SHIFTS}
    assert len(moved) == 9 and all(abs(dy) <= 1 and abs(dx) <= 1 for dy, dx in moved)


def test_augment_shifts_fits_each_layer_on_nine_times_the_rows() -> None:
    teacher, student = _teacher_and_student("conv-pads-strides", keep_fraction=0.5, noise=0.1)
    calibration = _data((4, 7, 7), 16, 1)
    plain = run_pass(student, "reconstruct", calibration=calibration, reference=teacher).stats
    shifted = run_pass(student, "reconstruct:augment=shifts", calibration=calibration, reference=teacher).stats
    assert shifted["layers"]["Conv#0"]["rows"] == 9 * plain["layers"]["Conv#0"]["rows"]
    assert shifted["layers_refit"] == 1
    assert shifted["layers"]["Conv#0"]["error_after"] < shifted["layers"]["Conv#0"]["error_before"]


def test_augment_shifts_needs_an_image_input() -> None:
    teacher, student = _teacher_and_student("gemm-transb", keep_fraction=0.5, noise=0.0)
    with pytest.raises(UsageError, match=r"augment=shifts needs an image input .*the inputs are x \[\d+, 12\]$"):
        run_pass(student, "reconstruct:augment=shifts", calibration=_data((12,), 8, 1), reference=teacher)


def test_digits_channel_removal_recovers_more_with_shifted_calibration_images() -> None:
    passes = ["simplify", "prune-channels:ratio=0.5"]
    plain, shifted = (
        onnxshrink.shrink(DIGITS, [*passes, spec], calibration=DIGITS_CALIB, inputs=DIGITS_TEST)
        for spec in ("reconstruct", "reconstruct:augment=shifts,ridge=0.01")
    )
    accuracy = [r.report["verification"]["accuracy_candidate"] for r in (plain, shifted)]
    assert accuracy[1] >= 0.985 and accuracy[1] > accuracy[0]
