"""``sort``: exact channel permutations by importance or for N:M, checked through onnxruntime."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
import onnx.printer
import pytest
from helpers import (
    RealModel,
    assert_close,
    assert_outputs_close,
    initializer_arrays,
    node_case_feed,
    node_cases,
    parse_model,
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
    scoped_feeds,
)

from onnxshrink.errors import UsageError
from onnxshrink.sparsity import satisfies_nm


def _wide(in_channels: int = 64, seed: int = 0) -> onnx.ModelProto:
    """Conv A (in_channels out) -> Relu -> Conv Y (32 x in_channels x 3 x 3): Y is N:M eligible."""
    text = """g (float[1,8,6,6] X) => (float[1,32,4,4] Y) {
        A = Conv (X, Wa, Ba)
        R = Relu (A)
        Y = Conv (R, Wy)
    }"""
    rng = np.random.default_rng(seed)
    # Channels of different scale, as in trained layers, so the order matters.
    scale = rng.lognormal(0.0, 0.7, size=(1, in_channels, 1, 1)).astype(np.float32)
    weights = {
        "Wa": rng.standard_normal((in_channels, 8, 1, 1)).astype(np.float32),
        "Ba": rng.standard_normal(in_channels).astype(np.float32),
        "Wy": (rng.standard_normal((32, in_channels, 3, 3)) * scale).astype(np.float32),
    }
    return parse_model(text, initializers=weights)


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("spec", ["sort", "sort:key=l2", "sort:for=2:4"])
def test_sort_keeps_the_function(name: str, spec: str) -> None:
    original = build(name)
    result = run_pass(original, [spec])
    out, passes = result.model, result.records
    assert_same_function(original, out, f"{name} {spec}")
    assert [v.name for v in out.graph.input] == [v.name for v in original.graph.input]
    assert [v.name for v in out.graph.output] == [v.name for v in original.graph.output]
    stats = passes[0]["stats"]
    refused = [label for label, (_, _, _, reason) in CASES[name].groups.items() if reason]
    assert set(refused) <= set(stats.get("skipped", {}))
    assert passes[0]["modified"] == (stats["tensors_rewritten"] > 0)


def test_key_orders_producer_channels_by_norm_descending() -> None:
    original = build("conv-bn-relu-conv")
    result = run_pass(original, ["sort:key=l1"])
    out, passes = result.model, result.records
    assert passes[0]["modified"] is True and passes[0]["stats"]["groups_permuted"] == 1
    before, after = initializer_arrays(original)["W1"], initializer_arrays(out)["W1"]
    norms = np.abs(after).sum(axis=(1, 2, 3))
    assert np.all(np.diff(norms) <= 0)
    np.testing.assert_array_equal(np.sort(norms), np.sort(np.abs(before).sum(axis=(1, 2, 3))))
    passes = run_pass(out, ["sort:key=l1"]).records
    assert passes[0]["modified"] is False  # already sorted: nothing to do


def test_for_nm_raises_kept_magnitude_on_a_wide_layer() -> None:
    original = _wide(64)
    result = run_pass(original, ["sort:for=2:4"])
    out, passes = result.model, result.records
    stats = passes[0]["stats"]
    layer = stats["layers"]["Conv#2"]  # unnamed nodes are named as prune names them
    assert layer["kept_after"] > layer["kept_before"] + 0.01, layer
    assert stats["kept_after"] == pytest.approx(layer["kept_after"])
    assert passes[0]["timings"]["search"] > 0  # timed in the record; its speed is benchmarked, not tested
    assert "search_seconds" not in stats  # timings stay out of the (deterministic) stats
    assert passes[0]["modified"] is True
    assert_same_function(original, out, "for=2:4")


def test_for_nm_is_deterministic() -> None:
    result = run_pass(_wide(128, seed=3), ["sort:for=2:4"])
    first, passes = result.model, result.records
    second = run_pass(_wide(128, seed=3), ["sort:for=2:4"]).model
    assert first.SerializeToString() == second.SerializeToString()
    assert passes[0]["stats"]["search_capped"] is False


def test_sort_then_prune_gives_exact_two_four_and_keeps_more() -> None:
    original = _wide(64)
    prune = "prune:pattern=2:4,min-size=0,keep-first-last=false"
    result = run_pass(original, ["sort:for=2:4", prune])
    sorted_then_pruned, passes = result.model, result.records
    plain = run_pass(original, [prune]).records
    weight = initializer_arrays(sorted_then_pruned)["Wy"]
    assert satisfies_nm(weight, 2, 4, axis=1)
    kept_sorted = passes[1]["stats"]["layers"]["Conv#2"]["kept_magnitude"]
    kept_plain = plain[0]["stats"]["layers"]["Conv#2"]["kept_magnitude"]
    assert kept_sorted > kept_plain + 0.01
    assert kept_sorted == pytest.approx(passes[0]["stats"]["layers"]["Conv#2"]["kept_after"])


def test_for_nm_skips_ineligible_and_split_groups_with_reasons() -> None:
    passes = run_pass(build("split-sizes"), ["sort:for=2:4"]).records
    assert "blocks" in passes[0]["stats"]["skipped"]["Conv 'A'"]
    passes = run_pass(build("conv-bn-relu-conv"), ["sort:for=2:4"]).records
    assert "not N:M eligible" in passes[0]["stats"]["skipped"]["Conv 'A'"]
    assert passes[0]["modified"] is False


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("sort:for=2", "sort: option for: must be N:M with 0 < N < M, such as 2:4, got '2'"),
        ("sort:for=4:4", "sort: option for: must be N:M with 0 < N < M, such as 2:4, got '4:4'"),
        ("sort:key=l3", "bad value 'l3' for option 'key' of pass 'sort'"),
        ("sort:seconds=-1", "sort: option seconds: must be >= 0, got -1"),
    ],
)
def test_bad_options_are_usage_errors(spec: str, message: str) -> None:
    with pytest.raises(UsageError, match=re.escape(message)):
        run_pass(build("concat"), spec)


def test_for_is_the_spec_key() -> None:
    from onnxshrink.spec import build_options, parse_spec

    options = build_options(parse_spec("sort:for=4:8"))
    assert options.nm == (4, 8)


NODE_CASES = {
    name: case
    for name, case in node_cases().items()
    if any(op in name for op in ("_conv", "_gemm", "_matmul")) and "integer" not in name
}


@pytest.mark.parametrize("name", sorted(NODE_CASES))
def test_node_suite_layers_keep_outputs(name: str) -> None:
    case = NODE_CASES[name]
    feed = node_case_feed(case)
    try:
        expected = run(case.model, feed)
    except Exception as error:  # onnxruntime cannot run this case
        pytest.skip(f"onnxruntime cannot run the original: {str(error).splitlines()[0][:80]}")
    for spec in ("sort", "sort:for=2:4"):
        out = run_pass(case.model, [spec]).model
        assert_outputs_close(expected, run(out, feed), context=f"{name} {spec}")


@pytest.mark.parametrize("spec", ["sort", "sort:for=2:4,seconds=1"])  # exactness does not need a long search
def test_real_models_keep_outputs(real_model: tuple[RealModel, Path], spec: str) -> None:
    model, path = real_model
    feed = real_model_feed(model, path)
    result = run_pass(path, [spec])
    out, passes = result.model, result.records
    # Permuted channels reorder float sums: 1e-5 x the output scale. rapidocr-det's sigmoid map is
    # ~0.005 on random input and carries its logits' rounding (9e-8): the floor is the exact-pass ATOL.
    assert_close(path, out, feed, scaled_atol=1e-5, context=f"{model.id} {spec}")
    stats = passes[0]["stats"]
    assert stats["groups_permuted"] <= stats["groups"]


def _scoped_bodies(model: onnx.ModelProto) -> list[str]:
    """Every subgraph and function body as text (names of unnamed nodes aside)."""
    graphs = [a.g for node in model.graph.node for a in node.attribute if a.type == onnx.AttributeProto.GRAPH]
    return [onnx.printer.to_text(g) for g in graphs] + [onnx.printer.to_text(f) for f in model.functions]


@pytest.mark.parametrize("main", [False, True], ids=["alone", "beside-main-chain"])
@pytest.mark.parametrize("name", sorted(SCOPED))
def test_chains_in_subgraphs_and_functions_are_left_alone_with_reasons(name: str, main: bool) -> None:
    original = build_scoped(name, main)
    result = run_pass(original, ["sort"])
    out, passes = result.model, result.records
    record = passes[0]
    reason = f"{SCOPED_WHERE[name]}: channel groups are built for the main graph only"
    assert record["stats"]["skipped"]["Conv 'A'"] == reason
    assert record["stats"]["skipped"]["Conv 'B'"] == reason
    assert record["modified"] is main  # only the main graph's chain P -> Q is sorted
    before, after = initializer_arrays(original), initializer_arrays(out)
    for weight in ("Wa", "Wb"):
        np.testing.assert_array_equal(after[weight], before[weight])
    assert _scoped_bodies(out) == _scoped_bodies(original)
    assert [v.SerializeToString() for v in out.graph.input] == [v.SerializeToString() for v in original.graph.input]
    assert [v.SerializeToString() for v in out.graph.output] == [v.SerializeToString() for v in original.graph.output]
    for inputs in scoped_feeds(original):
        assert_close(original, out, inputs, context=name)
