"""Channel removal: the invariant on one tiny graph per rule, and the ``prune-channels`` pass.

Invariant (docs/channels.md): the shrunk model computes what the original computes once only the
Stop consumers' input-weight slices of the removed channels are set to zero.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.helper
import onnx.numpy_helper
import onnx.printer
import onnx_ir as ir
import onnxruntime as ort
import pytest
from helpers import (
    ATOL,
    RealModel,
    assert_close,
    assert_outputs_close,
    initializer_arrays,
    output_scale,
    parse_model,
    random_arrays,
    real_model_feed,
    run,
    run_pass,
)
from helpers.channel_cases import (
    CASES,
    SCOPED,
    SCOPED_WHERE,
    assert_same_function,
    build,
    build_scoped,
    by_label,
    case_feed,
    scoped_feeds,
)

import onnxshrink
from onnxshrink.errors import UsageError
from onnxshrink.passes import channels


def zeroed_reference(
    original: onnx.ModelProto, plan: channels.ChannelPlan, keeps: Mapping[int, np.ndarray]
) -> onnx.ModelProto:
    """The original model with the removed channels' input slices of every Stop consumer zeroed."""
    removed: set[int] = set()
    for index, keep in keeps.items():
        group = plan.groups[index]
        mask = np.ones(group.size, dtype=bool)
        mask[keep] = False
        removed.update(group.classes[mask].tolist())
    reference = onnx.ModelProto()
    reference.CopyFrom(original)
    weights = {t.name: t for t in reference.graph.initializer}
    for node in reference.graph.node:  # weights held by Constant nodes (paddle2onnx exports)
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            weights.setdefault(node.output[0], node.attribute[0].t)
    done: set[int] = set()
    for group in plan.groups:
        for site in group.of_kind("consumer"):
            if id(site) in done:
                continue
            done.add(id(site))
            gone = np.flatnonzero(np.isin(site.classes, list(removed)))
            if not gone.size:
                continue
            assert site.node is not None
            tensor = weights[site.node.inputs[site.index].name]
            array = onnx.numpy_helper.to_array(tensor).copy()
            groups = int(site.extra.get("groups", 1))
            if groups > 1:
                per, rows = len(site.classes) // groups, array.shape[0] // groups
                for position in gone.tolist():
                    g = position // per
                    array[g * rows : (g + 1) * rows, position - g * per] = 0
            else:
                columns = (gone[:, None] * site.inner + np.arange(site.inner)[None, :]).reshape(-1)
                index: list[Any] = [slice(None)] * array.ndim
                index[site.axis] = columns
                array[tuple(index)] = 0
            tensor.CopyFrom(onnx.numpy_helper.from_array(array, tensor.name or None))
    return reference


def _half(group: channels.ChannelGroup, rng: np.random.Generator) -> np.ndarray:
    """About half of each block's channels (at least one), chosen at random, balanced across blocks."""
    per_block = max(1, min(len(b) for b in group.blocks) // 2)
    return np.sort(np.concatenate([rng.choice(b, per_block, replace=False) for b in group.blocks]))


@pytest.mark.parametrize("name", sorted(CASES))
def test_removal_equals_zeroed_consumers(name: str) -> None:
    original = build(name)
    model = ir.serde.deserialize_model(original)
    plan = channels.analyze(model, "remove")
    rng = np.random.default_rng(5)
    keeps = {group.index: _half(group, rng) for group in channels.iter_ok(plan)}
    reference = zeroed_reference(original, plan, keeps)
    count = channels.remove(model, plan, keeps)
    assert (count > 0) == bool(keeps)
    shrunk = ir.serde.serialize_model(model)
    onnx.checker.check_model(shrunk, full_check=True)
    # Fewer terms in the consumers' float sums change their rounding: 1e-5 x the output scale.
    assert_close(reference, shrunk, case_feed(original), atol=0.0, scaled_atol=1e-5, context=name)
    before = sum(onnx.numpy_helper.to_array(t).size for t in original.graph.initializer)
    after = sum(onnx.numpy_helper.to_array(t).size for t in shrunk.graph.initializer)
    assert (after < before) == bool(keeps)


def test_split_sizes_and_slice_bounds_are_rewritten() -> None:
    model = ir.serde.deserialize_model(build("split-sizes"))
    plan = channels.analyze(model, "remove")
    group = by_label(plan)["Conv 'A'"]
    channels.remove(model, plan, {group.index: np.array([0, 1, 6, 7, 8])})  # 2 of the first 6, 3 of the last 10
    np.testing.assert_array_equal(model.graph.initializers["sizes"].const_value.numpy(), [2, 3])
    model = ir.serde.deserialize_model(build("slice"))  # Slice [4, 12) of 16
    plan = channels.analyze(model, "remove")
    group = by_label(plan)["Conv 'A'"]
    channels.remove(model, plan, {group.index: np.array([0, 5, 6, 13])})
    assert model.graph.initializers["starts"].const_value.numpy().tolist() == [1]
    assert model.graph.initializers["ends"].const_value.numpy().tolist() == [3]


def test_unbalanced_grouped_conv_and_empty_keeps_are_refused() -> None:
    model = ir.serde.deserialize_model(build("grouped"))
    plan = channels.analyze(model, "remove")
    group = by_label(plan)["Conv 'A'"]
    with pytest.raises(UsageError, match="same number of channels in each group"):
        channels.remove(model, plan, {group.index: np.array([0, 1, 4])})
    with pytest.raises(UsageError, match="keep at least one"):
        channels.remove(model, plan, {group.index: np.array([], dtype=np.int64)})


def test_a_refused_removal_changes_nothing() -> None:
    original = build("grouped")
    model = ir.serde.deserialize_model(original)
    plan = channels.analyze(model, "remove")
    group = by_label(plan)["Conv 'A'"]
    with pytest.raises(UsageError):
        channels.remove(model, plan, {group.index: np.array([0, 1, 4])})
    after = ir.serde.serialize_model(model)
    for before, now in zip(original.graph.initializer, after.graph.initializer, strict=True):
        np.testing.assert_array_equal(onnx.numpy_helper.to_array(before), onnx.numpy_helper.to_array(now))


def _assert_invariant(original: onnx.ModelProto, shrunk: onnx.ModelProto, consumer: str, removed: np.ndarray) -> None:
    reference = onnx.ModelProto()
    reference.CopyFrom(original)
    for tensor in reference.graph.initializer:
        if tensor.name == consumer:
            array = onnx.numpy_helper.to_array(tensor).copy()
            array[:, removed] = 0
            tensor.CopyFrom(onnx.numpy_helper.from_array(array, consumer))
    # Fewer terms in the consumers' float sums change their rounding: 1e-5 x the output scale.
    assert_close(reference, shrunk, case_feed(original), atol=0.0, scaled_atol=1e-5)


@pytest.mark.parametrize("criterion", ["l1", "l2", "bn-gamma"])
def test_pass_removes_the_lowest_scores_and_keeps_the_invariant(criterion: str) -> None:
    original = build("conv-bn-relu-conv")
    result = run_pass(original, f"prune-channels:ratio=0.5,criterion={criterion}")
    out, record = result.model, result.record
    before, after = initializer_arrays(original), initializer_arrays(out)
    w1, w2 = before["W1"], before["W2"]
    if criterion == "bn-gamma":
        score = np.abs(before["s"])
    elif criterion == "l1":  # producer rows and consumer columns together
        score = np.abs(w1).sum(axis=(1, 2, 3)) + np.abs(w2).sum(axis=(0, 2, 3))
    else:
        score = np.sqrt((w1**2).sum(axis=(1, 2, 3)) + (w2**2).sum(axis=(0, 2, 3)))
    kept = np.sort(np.argsort(-score, kind="stable")[:8])
    removed = np.setdiff1d(np.arange(16), kept)
    np.testing.assert_array_equal(after["W1"], w1[kept])
    for name in ("B1", "s", "b", "m", "v"):
        np.testing.assert_array_equal(after[name], before[name][kept])
    np.testing.assert_array_equal(after["W2"], before["W2"][:, kept])
    assert record["modified"] is True
    stats = record["stats"]
    assert stats["channels"] == {"Conv 'A'": {"before": 16, "after": 8}}
    assert stats["channels_removed"] == 8 and stats["groups_pruned"] == 1
    assert stats["skipped"] == {"Conv 'Y'": "reaches graph output 'Y'"}
    _assert_invariant(original, out, "W2", removed)


def test_round_to_and_min_channels() -> None:
    original = build("concat")  # A: 8 channels, B: 24
    record = run_pass(original, "prune-channels:ratio=0.25").record
    assert record["stats"]["channels"] == {
        "Conv 'A'": {"before": 8, "after": 8},
        "Conv 'B'": {"before": 24, "after": 16},
    }
    record = run_pass(original, "prune-channels:ratio=0.25,round-to=1,min-channels=1").record
    assert record["stats"]["channels"] == {
        "Conv 'A'": {"before": 8, "after": 6},
        "Conv 'B'": {"before": 24, "after": 18},
    }
    record = run_pass(original, "prune-channels:ratio=0.9,round-to=1,min-channels=5").record
    assert record["stats"]["channels"]["Conv 'B'"]["after"] == 5


def test_attention_loses_whole_heads_and_keeps_the_invariant() -> None:
    original = build("attention-heads")  # 4 heads of d=4
    result = run_pass(original, "prune-channels:ratio=0.5,round-to=1,min-channels=1")
    out, record = result.model, result.record
    before, after = initializer_arrays(original), initializer_arrays(out)
    d = 4
    columns = {name: before[name].reshape(16, 4, d) for name in ("Wq", "Wk", "Wv")}  # [in, head, i]
    score = sum((c**2).sum(axis=(0, 2)) for c in columns.values()) + (before["Wo"].reshape(4, d, 16) ** 2).sum(
        axis=(1, 2)
    )
    kept = np.sort(np.argsort(-score, kind="stable")[:2])
    removed = np.setdiff1d(np.arange(4), kept)
    features = (kept[:, None] * d + np.arange(d)).reshape(-1)
    for name in ("Wq", "Wk", "Wv"):
        np.testing.assert_array_equal(after[name], before[name][:, features])
    for name in ("Bq", "Bk", "Bv"):
        np.testing.assert_array_equal(after[name], before[name][features])
    np.testing.assert_array_equal(after["Wo"], before["Wo"][features])
    np.testing.assert_array_equal(after["split_heads"], [0, 0, 2, 4])
    np.testing.assert_array_equal(after["merge_heads"], [0, 0, 8])
    stats = record["stats"]
    assert stats["channels"] == {"MatMul 'Q0' (+2)": {"before": 4, "after": 2}}
    assert stats["skipped"] == {"MatMul 'O0'": "reaches graph output 'Y'"}
    reference = onnx.ModelProto()
    reference.CopyFrom(original)
    for tensor in reference.graph.initializer:
        if tensor.name == "Wo":  # the output projection's input rows of the removed heads
            array = onnx.numpy_helper.to_array(tensor).copy()
            array[(removed[:, None] * d + np.arange(d)).reshape(-1)] = 0
            tensor.CopyFrom(onnx.numpy_helper.from_array(array, "Wo"))
    # Fewer terms in the consumers' float sums change their rounding: 1e-5 x the output scale.
    assert_close(reference, out, case_feed(original), atol=0.0, scaled_atol=1e-5)


def test_heads_round_to_whole_channel_multiples() -> None:
    original = build("attention-heads")
    # round-to=8 and min-channels=8 count channels: 2 heads of 4 is the smallest aligned choice.
    record = run_pass(original, "prune-channels:ratio=0.75").record
    assert record["stats"]["channels"] == {"MatMul 'Q0' (+2)": {"before": 4, "after": 2}}
    record = run_pass(original, "prune-channels:ratio=0.25,round-to=16").record
    assert record["stats"]["channels"] == {"MatMul 'Q0' (+2)": {"before": 4, "after": 4}}
    record = run_pass(original, "prune-channels:ratio=0.75,round-to=1,min-channels=1").record
    assert record["stats"]["channels"] == {"MatMul 'Q0' (+2)": {"before": 4, "after": 1}}


def test_residual_stream_and_ffn_neurons() -> None:
    record = run_pass(build("attention-residual-stream"), "prune-channels:ratio=0.5,round-to=1,min-channels=1").record
    assert record["stats"]["skipped"] == {
        "MatMul 'O0'": "Add 'R' couples channels with 'X', which no prunable layer makes"
    }
    assert record["stats"]["channels"] == {"MatMul 'Q0' (+2)": {"before": 4, "after": 2}}
    original = build("ffn-gelu-erf")
    result = run_pass(original, "prune-channels:ratio=0.5")
    out, record = result.model, result.record
    assert record["stats"]["channels"] == {"MatMul 'H'": {"before": 32, "after": 16}}
    assert initializer_arrays(out)["W1"].shape == (16, 16) and initializer_arrays(out)["W2"].shape == (16, 16)


def test_global_scope_takes_from_the_weakest_group() -> None:
    original = build("concat")
    weights = {t.name: t for t in original.graph.initializer}
    weak = onnx.numpy_helper.to_array(weights["Wb"]).copy()
    weak[:8] *= 0.01  # eight weak channels in B (producer rows and consumer columns), none in A
    weights["Wb"].CopyFrom(onnx.numpy_helper.from_array(weak, "Wb"))
    columns = onnx.numpy_helper.to_array(weights["Wc"]).copy()
    columns[:, 8:16] *= 0.01  # Concat puts B's channel c at position 8 + c
    weights["Wc"].CopyFrom(onnx.numpy_helper.from_array(columns, "Wc"))
    result = run_pass(original, "prune-channels:ratio=0.25,scope=global,round-to=1,min-channels=1")
    out, record = result.model, result.record
    assert record["stats"]["channels"] == {
        "Conv 'A'": {"before": 8, "after": 8},
        "Conv 'B'": {"before": 24, "after": 16},
    }
    np.testing.assert_array_equal(initializer_arrays(out)["Wb"], weak[8:])


def test_include_exclude_and_bn_gamma_skips() -> None:
    original = build("concat")
    record = run_pass(original, "prune-channels:ratio=0.5,round-to=1,exclude=Conv").record
    assert record["modified"] is False
    # Refused groups are reported beside the ones include/exclude left alone.
    assert set(record["stats"]["skipped"].values()) == {"excluded by 'Conv'", "reaches graph output 'Y'"}
    record = run_pass(original, "prune-channels:ratio=0.5,criterion=bn-gamma").record
    assert record["stats"]["skipped"]["Conv 'A'"] == "criterion bn-gamma: no BatchNormalization on its channels"
    record = run_pass(original, "prune-channels:ratio=0").record
    assert record["modified"] is False


def test_activation_criterion_reads_calibration_data() -> None:
    original = build("conv-bn-relu-conv")
    rng = np.random.default_rng(0)
    calibration = {"X": rng.standard_normal((16, 8, 6, 6)).astype(np.float32)}
    result = run_pass(original, "prune-channels:ratio=0.5,criterion=activation", calibration=calibration)
    out, record = result.model, result.record
    assert record["stats"]["channels"] == {"Conv 'A'": {"before": 16, "after": 8}}
    # The kept channels are those with the largest mean |A| (the first Conv's output) on the data.
    exposed = onnx.ModelProto()
    exposed.CopyFrom(original)
    exposed.graph.output.append(onnx.helper.make_tensor_value_info("A", onnx.TensorProto.FLOAT, None))
    session_outputs = [run(exposed, {"X": calibration["X"][i : i + 1]})[1] for i in range(16)]
    mean = np.abs(np.concatenate(session_outputs)).mean(axis=(0, 2, 3))
    kept = np.sort(np.argsort(-mean, kind="stable")[:8])
    np.testing.assert_array_equal(initializer_arrays(out)["W1"], initializer_arrays(original)["W1"][kept])
    with pytest.raises(UsageError, match="needs calibration data"):
        run_pass(original, "prune-channels:criterion=activation")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("prune-channels:ratio=1", "prune-channels: option ratio: must be < 1, got 1"),
        ("prune-channels:round-to=0", "prune-channels: option round-to: must be >= 1, got 0"),
        ("prune-channels:min-channels=0", "prune-channels: option min-channels: must be >= 1, got 0"),
        ("prune-channels:criterion=l3", "bad value 'l3' for option 'criterion' of pass 'prune-channels'"),
        ("prune-channels:dead=all", "bad value 'all' for option 'dead' of pass 'prune-channels'"),
    ],
)
def test_bad_options_are_usage_errors(spec: str, message: str) -> None:
    with pytest.raises(UsageError, match=re.escape(message)):
        run_pass(build("concat"), spec)


def test_real_models_keep_the_invariant(real_model: tuple[RealModel, Path]) -> None:
    spec, path = real_model
    original = onnx.load(str(path))
    model = ir.serde.deserialize_model(original)
    plan = channels.analyze(model, "remove")
    groups = list(channels.iter_ok(plan))
    if not groups:
        pytest.skip(f"{spec.id}: no removable channel group")
    rng = np.random.default_rng(0)
    keeps = {group.index: _half(group, rng) for group in groups}
    reference = zeroed_reference(original, plan, keeps)
    channels.remove(model, plan, keeps)
    shrunk = ir.serde.serialize_model(model)
    onnx.checker.check_model(shrunk)
    inputs = real_model_feed(spec, path)
    want, got = run(reference, inputs), run(shrunk, inputs)
    scale = output_scale(want)
    # Half the channels gone, rapidocr-rec's attention amplifies float rounding to ~5e-5 on its
    # softmax output: the reference alone moves that much between ORT's optimization levels.
    # The tolerance is four times that spread of the reference itself (a wrong channel gives ~0.1).
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    plain = ort.InferenceSession(reference.SerializeToString(), options, providers=["CPUExecutionProvider"])
    spread = max(
        (
            float(np.abs(np.asarray(a) - np.asarray(b)).max())
            for a, b in zip(want, plain.run(None, inputs), strict=True)
            if np.asarray(a).dtype.kind == "f"
        ),
        default=0.0,
    )
    assert_outputs_close(want, got, rtol=1e-5, atol=max(ATOL, 1e-5 * scale, 4 * spread), context=spec.id)


@pytest.mark.parametrize("spec", ["prune-channels:ratio=0.5", "prune-channels:ratio=0.25,scope=global"])
def test_real_models_run_after_the_pass(real_model: tuple[RealModel, Path], spec: str) -> None:
    model, path = real_model
    result = onnxshrink.shrink(path, [spec], verify=False)
    out = result.to_proto()
    onnx.checker.check_model(out)
    inputs = real_model_feed(model, path)
    want, got = run(str(path), inputs), run(out, inputs)
    assert [np.asarray(w).shape for w in want] == [np.asarray(g).shape for g in got]
    stats = result.report["passes"][0]["stats"]
    assert result.report["passes"][0]["modified"] == (stats["channels_removed"] > 0)
    if stats["channels_removed"]:
        assert result.report["output"]["params"] < result.report["input"]["params"]


def _with_dead_rows(model: onnx.ModelProto, weight: str, rows: list[int], bias: str | None = None) -> onnx.ModelProto:
    """The model with the given output rows of ``weight`` (and entries of ``bias``) set to zero."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for tensor in out.graph.initializer:
        if tensor.name in (weight, bias):
            array = onnx.numpy_helper.to_array(tensor).copy()
            array[rows] = 0
            tensor.CopyFrom(onnx.numpy_helper.from_array(array, tensor.name))
    return out


def test_dead_only_removes_constant_channels_and_folds_them_exactly() -> None:
    # Dead rows of W1 give BN's constant (beta - mean * gamma / std), through Relu, into a 1x1 Conv.
    original = _with_dead_rows(build("conv-bn-relu-conv"), "W1", [1, 4, 9], bias="B1")
    result = run_pass(original, "prune-channels:dead=only")
    out, record = result.model, result.record
    assert record["stats"]["channels"]["Conv 'A'"] == {"before": 16, "after": 13}
    assert record["stats"]["biases_folded"] == 1
    assert record["modified"] is True
    assert initializer_arrays(out)["W2"].shape == (4, 13, 1, 1)
    assert_same_function(original, out, "dead conv-bn-relu-conv")


def test_dead_only_folds_into_a_gemm_bias_it_creates() -> None:
    text = """g (float[2,4,5,5] X) => (float[2,6] Y) {
        A = Conv (X, Wa, Ba)
        G = GlobalAveragePool (A)
        F = Flatten (G)
        Y = Gemm <transB=1, alpha=0.5> (F, Wg)
    }"""
    proto = parse_model(text, initializers=random_arrays({"Wa": (16, 4, 3, 3), "Ba": (16,), "Wg": (6, 16)}))
    original = _with_dead_rows(proto, "Wa", [0, 5])  # the bias stays: the channels are the constant Ba[c]
    result = run_pass(original, "prune-channels:dead=only")
    out, record = result.model, result.record
    assert record["stats"]["channels"]["Conv 'A'"] == {"before": 16, "after": 14}
    assert len(out.graph.node[-1].input) == 3  # a bias C was created
    assert_same_function(original, out, "dead gap-gemm")


def test_dead_only_leaves_channels_a_padded_consumer_would_see_at_its_borders() -> None:
    text = """g (float[1,8,6,6] X) => (float[1,4,6,6] Y) {
        A = Conv (X, Wa, Ba)
        R = Relu (A)
        Y = Conv <pads=[1,1,1,1]> (R, Wy)
    }"""
    rng = np.random.default_rng(0)
    bias = np.full(16, 1.0, dtype=np.float32)
    bias[3] = -1.0  # Relu(-1) = 0: this dead channel is zero everywhere, padding or not
    weights = {"Wa": rng.standard_normal((16, 8, 1, 1)).astype(np.float32), "Ba": bias}
    weights["Wy"] = rng.standard_normal((4, 16, 3, 3)).astype(np.float32)
    proto = parse_model(text, initializers=weights)
    original = _with_dead_rows(proto, "Wa", [2, 3])
    result = run_pass(original, "prune-channels:dead=only")
    out, record = result.model, result.record
    assert record["stats"]["channels"]["Conv 'A'"] == {"before": 16, "after": 15}  # only channel 3 goes
    assert record["stats"]["biases_folded"] == 0
    assert_same_function(original, out, "dead padded")


def test_dead_only_without_dead_channels_changes_nothing() -> None:
    original = build("conv-bn-relu-conv")
    result = run_pass(original, "prune-channels:dead=only")
    out, record = result.model, result.record
    assert record["modified"] is False
    assert initializer_arrays(out).keys() == initializer_arrays(original).keys()
    for name, array in initializer_arrays(original).items():
        np.testing.assert_array_equal(initializer_arrays(out)[name], array)


def test_real_models_dead_only_is_exact(real_model: tuple[RealModel, Path]) -> None:
    spec, path = real_model
    model = ir.serde.deserialize_model(onnx.load(str(path)))
    groups = list(channels.iter_ok(channels.analyze(model, "remove")))
    if not groups:
        pytest.skip(f"{spec.id}: no removable channel group")
    for group in groups:  # two dead channels per group, at its first producer
        site = group.of_kind("producer")[0]
        assert site.node is not None
        tensor = ir.convenience.get_const_tensor(site.node.inputs[1])
        assert tensor is not None
        weight = tensor.numpy().copy()
        index: list[Any] = [slice(None)] * weight.ndim
        index[site.axis] = [0, 1]
        weight[tuple(index)] = 0
        channels.set_constant_input(model, site.node, 1, weight)
    original = ir.serde.serialize_model(model)
    result = run_pass(original, "prune-channels:dead=only")
    assert result.stats["channels_removed"] > 0
    assert_close(original, result.model, real_model_feed(spec, path), scaled_atol=1e-5, context=spec.id)


def test_dead_only_keeps_a_dead_channel_a_spatial_gate_scales() -> None:
    # Channel c of A is the constant Ba[c], but the gate multiplies it by a map that varies.
    original = _with_dead_rows(build("conv-gate"), "Wa", [2, 7])
    result = run_pass(original, "prune-channels:dead=only")
    out, record = result.model, result.record
    assert record["modified"] is False
    assert record["stats"]["channels_removed"] == 0
    assert_same_function(original, out, "dead gated")


@pytest.mark.parametrize("spec", ["prune-channels:ratio=0.5,round-to=1,min-channels=1", "prune-channels:dead=only"])
@pytest.mark.parametrize("main", [False, True], ids=["alone", "beside-main-chain"])
@pytest.mark.parametrize("name", sorted(SCOPED))
def test_chains_in_subgraphs_and_functions_are_left_alone_with_reasons(name: str, main: bool, spec: str) -> None:
    original = build_scoped(name, main)
    result = run_pass(original, spec)
    out, record = result.model, result.record
    reason = f"{SCOPED_WHERE[name]}: channel groups are built for the main graph only"
    assert record["stats"]["skipped"]["Conv 'A'"] == reason
    assert record["stats"]["skipped"]["Conv 'B'"] == reason
    pruned_main = main and "ratio" in spec  # only the main graph's chain P -> Q loses channels
    assert record["modified"] is pruned_main
    before, after = initializer_arrays(original), initializer_arrays(out)
    for weight in ("Wa", "Wb"):
        np.testing.assert_array_equal(after[weight], before[weight])
    if pruned_main:
        assert after["Wp"].shape == (8, 8, 1, 1) and after["Wq"].shape == (4, 8, 1, 1)
    assert [onnx.printer.to_text(f) for f in out.functions] == [onnx.printer.to_text(f) for f in original.functions]
    assert [v.SerializeToString() for v in out.graph.output] == [v.SerializeToString() for v in original.graph.output]
    for inputs in scoped_feeds(original):
        want, got = run(original, inputs), run(out, inputs)
        # Y comes out of the construct: exact. Z (main chain) is exact unless its channels went.
        compared = 1 if pruned_main else len(want)
        assert_outputs_close(want[:compared], got[:compared], rtol=1e-5, atol=ATOL, context=name)
