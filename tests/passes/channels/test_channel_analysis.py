"""Channel dependency groups on one tiny ONNX-text graph per rule, and exact permutations through ORT."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.helper
import onnx.numpy_helper
import onnx_ir as ir
import pytest
from helpers import initializer_arrays, parse_model, random_arrays
from helpers.channel_cases import CASES, SCOPED, SCOPED_WHERE, assert_same_function, build, build_scoped, by_label

from onnxshrink.errors import UsageError
from onnxshrink.passes import channels
from onnxshrink.passes.channels import Purpose


@pytest.mark.parametrize("name", sorted(CASES))
def test_groups_follow_the_rule_table(name: str) -> None:
    model = ir.serde.deserialize_model(build(name))
    plan = channels.analyze(model, "permute")
    groups = by_label(plan)
    for label, (size, blocks, consumers, reason) in CASES[name].groups.items():
        assert label in groups, f"{name}: no group {label}; have {list(groups)}"
        group = groups[label]
        assert group.size == size
        assert sorted(len(b) for b in group.blocks) == sorted(blocks)
        assert {site.node_label for site in group.of_kind("consumer")} == consumers
        assert (group.reasons[0].reason if group.reasons else None) == reason
    described = plan.describe()
    assert [d["label"] for d in described] == [g.label for g in plan.groups]


@pytest.mark.parametrize("name", sorted(CASES))
def test_random_permutation_keeps_the_function(name: str) -> None:
    original = build(name)
    model = ir.serde.deserialize_model(original)
    plan = channels.analyze(model, "permute")
    rng = np.random.default_rng(3)
    orders = {g.index: rng.permutation(g.size) for g in channels.iter_ok(plan)}
    count = channels.permute(model, plan, orders)
    assert (count > 0) == bool(orders)
    changed = ir.serde.serialize_model(model)
    onnx.checker.check_model(changed, full_check=True)
    assert [v.name for v in changed.graph.output] == [v.name for v in original.graph.output]
    assert_same_function(original, changed, name)
    if orders:
        before, after = initializer_arrays(original), initializer_arrays(changed)
        assert any(not np.array_equal(before[k], after[k]) for k in before if k in after)


def test_the_permutation_moves_every_site_together() -> None:
    model = ir.serde.deserialize_model(build("conv-bn-relu-conv"))
    weights = {v.name: v.const_value.numpy() for v in model.graph.initializers.values()}
    plan = channels.analyze(model, "permute")
    order = np.arange(16)[::-1].copy()
    channels.permute(model, plan, {by_label(plan)["Conv 'A'"].index: order})
    after = {v.name: v.const_value.numpy() for v in model.graph.initializers.values()}
    np.testing.assert_array_equal(after["W1"], weights["W1"][order])
    for name in ("B1", "s", "b", "m", "v"):
        np.testing.assert_array_equal(after[name], weights[name][order])
    np.testing.assert_array_equal(after["W2"], weights["W2"][:, order])


def test_split_blocks_keep_their_segments() -> None:
    model = ir.serde.deserialize_model(build("split-sizes"))
    plan = channels.analyze(model, "permute")
    group = by_label(plan)["Conv 'A'"]
    weights = model.graph.initializers["Wa"].const_value.numpy()
    channels.permute(model, plan, {group.index: np.arange(16)[::-1].copy()})
    after = model.graph.initializers["Wa"].const_value.numpy()
    # Each Split output keeps its own channels, reversed within the segment.
    np.testing.assert_array_equal(after[:6], weights[:6][::-1])
    np.testing.assert_array_equal(after[6:], weights[6:][::-1])


def test_removal_refuses_what_permutation_allows() -> None:
    model = ir.serde.deserialize_model(build("spatial-gate"))
    assert by_label(channels.analyze(model, "permute"))["Conv 'A'"].ok
    refused = by_label(channels.analyze(model, "remove"))["Conv 'A'"]
    assert [r.reason for r in refused.reasons] == ["ReduceMean 'T' reduces over the channel axis (lossy)"]


def test_heads_read_through_shape_are_refused_for_removal_only_where_the_count_is_read() -> None:
    plan = channels.analyze(ir.serde.deserialize_model(build("attention-reads-head-count")), "remove")
    assert by_label(plan)["MatMul 'Q0' (+2)"].reasons[0].reason == "Shape 'CS' reads the channel count"
    # The same Shape read at the batch axis only (attention-dynamic) leaves the heads removable.
    plan = channels.analyze(ir.serde.deserialize_model(build("attention-dynamic")), "remove")
    assert by_label(plan)["MatMul 'Q0' (+2)"].ok


def test_bad_decisions_are_usage_errors() -> None:
    model = ir.serde.deserialize_model(build("graph-output"))
    plan = channels.analyze(model, "permute")
    with pytest.raises(UsageError, match="refused: reaches graph output 'A'"):
        channels.permute(model, plan, {0: np.arange(16)})
    model = ir.serde.deserialize_model(build("conv-bn-relu-conv"))
    plan = channels.analyze(model, "permute")
    with pytest.raises(UsageError, match="not a permutation"):
        channels.permute(model, plan, {0: np.zeros(16, dtype=np.int64)})
    with pytest.raises(UsageError, match="built for 'permute'"):
        channels.remove(model, plan, {0: np.arange(8)})


def test_shared_constants_are_copied_not_changed() -> None:
    text = """g (float[1,8,6,6] X) => (float[1,4,6,6] Y, float[1,4,6,6] Z) {
        A = Conv (X, Wa)
        M = Mul (A, k)
        Y = Conv (M, Wy)
        B = Conv (X, Wb)
        N = Mul (B, k)
        Z = Conv (N, Wz)
    }"""
    shapes = {"Wa": (16, 8, 1, 1), "Wb": (16, 8, 1, 1), "k": (1, 16, 1, 1), "Wy": (4, 16, 1, 1), "Wz": (4, 16, 1, 1)}
    model_proto = parse_model(text, initializers=random_arrays(shapes))
    model = ir.serde.deserialize_model(model_proto)
    plan = channels.analyze(model, "permute")
    group = by_label(plan)["Conv 'A'"]
    channels.permute(model, plan, {group.index: np.arange(16)[::-1].copy()})
    changed = ir.serde.serialize_model(model)
    onnx.checker.check_model(changed)
    assert_same_function(model_proto, changed, "shared constant")
    np.testing.assert_array_equal(
        model.graph.initializers["k"].const_value.numpy(), onnx.numpy_helper.to_array(model_proto.graph.initializer[2])
    )


def test_a_channel_read_inside_a_subgraph_refuses_its_group() -> None:
    text = """g (float[1,8,6,6] X, bool C) => (float[1,4,6,6] Y, float[1,16,6,6] Z) {
        A = Conv (X, Wa)
        Y = Conv (A, Wy)
        Z = If (C) <
            then_branch = t () => (float[1,16,6,6] O) { O = Relu (A) },
            else_branch = e () => (float[1,16,6,6] O) { O = Neg (A) }
        >
    }"""
    proto = parse_model(text, initializers=random_arrays({"Wa": (16, 8, 1, 1), "Wy": (4, 16, 1, 1)}))
    model = ir.serde.deserialize_model(proto)
    group = by_label(channels.analyze(model, "permute"))["Conv 'A'"]
    assert [r.reason for r in group.reasons] == ["'A' is read inside a subgraph (Relu)"]


@pytest.mark.parametrize("purpose", ["permute", "remove"])
@pytest.mark.parametrize("name", sorted(SCOPED))
def test_producers_in_subgraphs_and_functions_are_listed_outside(name: str, purpose: Purpose) -> None:
    model = ir.serde.deserialize_model(build_scoped(name, main=True))
    plan = channels.analyze(model, purpose)
    reason = f"{SCOPED_WHERE[name]}: channel groups are built for the main graph only"
    assert {label: r.reason for label, r in plan.outside.items()} == {"Conv 'A'": reason, "Conv 'B'": reason}
    assert [group.label for group in plan.groups] == ["Conv 'P'", "Conv 'Z'"]
    assert by_label(plan)["Conv 'P'"].ok
    assert plan.refused() == {"Conv 'Z'": "reaches graph output 'Z'", "Conv 'A'": reason, "Conv 'B'": reason}


def test_an_overridable_initializer_is_not_a_constant() -> None:
    """A Reshape target that is also a graph input can change at run time: the group is refused.

    (Before onnxshrink.ir.constants, the integer readers took such an initializer as a constant
    and a removal rewrote it into a new initializer, cutting the caller's override off.)
    """
    proto = build("reshape-matmul")
    plan = channels.analyze(ir.serde.deserialize_model(proto), "remove")
    assert by_label(plan)["Conv 'A'"].ok
    shape = next(t for t in proto.graph.initializer if t.name == "shape")
    proto.graph.input.append(onnx.helper.make_tensor_value_info("shape", shape.data_type, list(shape.dims)))
    plan = channels.analyze(ir.serde.deserialize_model(proto), "remove")
    group = by_label(plan)["Conv 'A'"]
    assert [r.reason for r in group.reasons] == ["Reshape 'F' has a non-constant target or unknown shapes"]
    assert not group.reasons[0].missing_facts  # no shape could make it constant
