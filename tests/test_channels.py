"""Channel dependency groups on one tiny ONNX-text graph per rule, and exact permutations through ORT."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import onnx.helper
import onnx.numpy_helper
import onnx.parser
import onnx_ir as ir
import pytest
from ort_check import assert_outputs_close, run

from onnxshrink.errors import UsageError
from onnxshrink.passes import channels
from onnxshrink.passes.channels import Purpose

HEADER = '<ir_version: 8, opset_import: ["" : 17]>'


# BERT-style self-attention as torch exports it: 4 heads of 4 over a 16-wide stream, a mask added
# to the scores; ``tail`` ends it: the output projection alone, or the residual stream X + O0 and
# its LayerNormalization.
ATTENTION = """g (float[2,5,16] X, float[2,1,1,5] M) => (float[2,5,16] Y) {{
    Q0 = MatMul (X, Wq)
    Q1 = Add (Bq, Q0)
    Q2 = Reshape (Q1, split_heads)
    Q = Transpose <perm=[0,2,1,3]> (Q2)
    K0 = MatMul (X, Wk)
    K1 = Add (Bk, K0)
    K2 = Reshape (K1, split_heads)
    K = Transpose <perm=[0,2,3,1]> (K2)
    V0 = MatMul (X, Wv)
    V1 = Add (V0, Bv)
    V2 = Reshape (V1, split_heads)
    V = Transpose <perm=[0,2,1,3]> (V2)
    S0 = MatMul (Q, K)
    S1 = Div (S0, scale)
    S2 = Add (S1, M)
    P = Softmax <axis=-1> (S2)
    C0 = MatMul (P, V)
    C1 = Transpose <perm=[0,2,1,3]> (C0)
    C2 = Reshape (C1, merge_heads)
    O0 = MatMul (C2, Wo)
    {tail}
}}"""

# The same block as torch's SDPA decomposition exports it (after `fold`), batch and sequence
# dynamic: the head count is -1 in every Reshape, the merge targets are computed from Shape/Gather,
# and the mask reaches the scores through an Expand to a computed [B, -1 -> 1, S, S].
ATTENTION_DYNAMIC = """g (float[N,S,16] X, float[N,S] AM) => (float[N,S,16] Y) {{
    Q0 = MatMul (X, Wq)
    Q1 = Reshape (Q0, split_any)
    Q = Transpose <perm=[0,2,1,3]> (Q1)
    K0 = MatMul (X, Wk)
    K1 = Reshape (K0, split_any)
    K = Transpose <perm=[0,2,3,1]> (K1)
    V0 = MatMul (X, Wv)
    V1 = Reshape (V0, split_any)
    V = Transpose <perm=[0,2,1,3]> (V1)
    QS = Shape (Q)
    Sg = Gather <axis=0> (QS, two)
    Sq = Unsqueeze (Sg, axis0)
    XS = Shape (X)
    Bg = Gather <axis=0> (XS, zero)
    Bu = Unsqueeze (Bg, axis0)
    Sx = Gather <axis=0> (XS, one)
    Su = Unsqueeze (Sx, axis0)
    Tgt = Concat <axis=0> (Bu, minus1, Su, Su)
    Eq = Equal (Tgt, minus1s)
    Fixed = Where (Eq, ones4, Tgt)
    Mu = Unsqueeze (AM, axes12)
    Mask = Expand (Mu, Fixed)
    Qs = Mul (Q, scale)
    S0 = MatMul (Qs, K)
    S1 = Add (S0, Mask)
    P = Softmax <axis=-1> (S1)
    C0 = MatMul (P, V)
    CS = Shape (C0)
    Bc0 = Gather <axis=0> (CS, zero)
    Bc = Unsqueeze (Bc0, axis0)
    T3 = Concat <axis=0> (Bc, minus1, Sq, four)
    C1 = Reshape (C0, T3)
    C2 = Transpose <perm=[0,2,1,3]> (C1)
    {merge}
    C3 = Reshape (C2, T4)
    Y = MatMul (C3, Wo)
}}"""
QKVO = dict.fromkeys(("Wq", "Wk", "Wv", "Wo"), (16, 16))


@dataclasses.dataclass(frozen=True)
class Case:
    text: str
    weights: dict[str, tuple[int, ...]]
    # label -> (channels, blocks, consumers, first reason or None) for the groups we check
    groups: dict[str, tuple[int, list[int], set[str], str | None]]


CASES: dict[str, Case] = {
    "conv-bn-relu-conv": Case(
        """g (float[1,8,6,6] X) => (float[1,4,6,6] Y) {
            A = Conv <pads=[1,1,1,1]> (X, W1, B1)
            N = BatchNormalization (A, s, b, m, v)
            R = Relu (N)
            Y = Conv (R, W2)
        }""",
        {"W1": (16, 8, 3, 3), "B1": (16,), "s": (16,), "b": (16,), "m": (16,), "v": (16,), "W2": (4, 16, 1, 1)},
        {"Conv 'A'": (16, [16], {"Conv 'Y'"}, None), "Conv 'Y'": (4, [4], set(), "reaches graph output 'Y'")},
    ),
    "residual-add": Case(
        """g (float[1,8,6,6] X) => (float[1,4,6,6] Y) {
            A = Conv (X, Wa)
            R = Relu (A)
            B = Conv <pads=[1,1,1,1]> (R, Wb, Bb)
            S = Add (R, B)
            T = Mul (S, k)
            Y = Conv (T, Wc)
        }""",
        {"Wa": (16, 8, 1, 1), "Wb": (16, 16, 3, 3), "Bb": (16,), "k": (1, 16, 1, 1), "Wc": (4, 16, 1, 1)},
        {"Conv 'A' (+1)": (16, [16], {"Conv 'B'", "Conv 'Y'"}, None)},
    ),
    "concat": Case(
        """g (float[1,8,6,6] X) => (float[1,4,6,6] Y) {
            A = Conv (X, Wa)
            B = Conv (X, Wb)
            C = Concat <axis=1> (A, B)
            Y = Conv (C, Wc)
        }""",
        {"Wa": (8, 8, 1, 1), "Wb": (24, 8, 1, 1), "Wc": (4, 32, 1, 1)},
        {"Conv 'A'": (8, [8], {"Conv 'Y'"}, None), "Conv 'B'": (24, [24], {"Conv 'Y'"}, None)},
    ),
    "split-sizes": Case(
        """g (float[1,8,6,6] X) => (float[1,4,6,6] Y) {
            A = Conv (X, Wa, Ba)
            P, Q = Split <axis=1> (A, sizes)
            Y1 = Conv (P, W1)
            Y2 = Conv (Q, W2)
            Y = Add (Y1, Y2)
        }""",
        {"Wa": (16, 8, 1, 1), "Ba": (16,), "W1": (4, 6, 1, 1), "W2": (4, 10, 1, 1)},
        {"Conv 'A'": (16, [6, 10], {"Conv 'Y1'", "Conv 'Y2'"}, None)},
    ),
    "slice": Case(
        """g (float[1,8,6,6] X) => (float[1,4,6,6] Y) {
            A = Conv (X, Wa)
            P = Slice (A, starts, ends, axes)
            Y = Conv (P, W1)
        }""",
        {"Wa": (16, 8, 1, 1), "W1": (4, 8, 1, 1)},
        {"Conv 'A'": (16, [8, 8], {"Conv 'Y'"}, None)},
    ),
    "flatten-gemm": Case(
        """g (float[1,4,3,3] X) => (float[1,5] Y) {
            A = Conv <pads=[1,1,1,1]> (X, Wa)
            R = Relu (A)
            F = Flatten <axis=1> (R)
            Y = Gemm <transB=0> (F, Wg, Bg)
        }""",
        {"Wa": (8, 4, 3, 3), "Wg": (72, 5), "Bg": (5,)},
        {"Conv 'A'": (8, [8], {"Gemm 'Y'"}, None)},
    ),
    "gap-flatten-gemm": Case(
        """g (float[1,4,5,5] X) => (float[1,5] Y) {
            A = Conv (X, Wa)
            G = GlobalAveragePool (A)
            F = Flatten (G)
            Y = Gemm <transB=1> (F, Wg)
        }""",
        {"Wa": (16, 4, 3, 3), "Wg": (5, 16)},
        {"Conv 'A'": (16, [16], {"Gemm 'Y'"}, None)},
    ),
    "reshape-matmul": Case(
        """g (float[2,4,3,3] X) => (float[2,5] Y) {
            A = Conv <pads=[1,1,1,1]> (X, Wa)
            F = Reshape (A, shape)
            Y = MatMul (F, Wm)
        }""",
        {"Wa": (8, 4, 3, 3), "Wm": (72, 5)},
        {"Conv 'A'": (8, [8], {"MatMul 'Y'"}, None)},
    ),
    "depthwise": Case(
        """g (float[1,4,6,6] X) => (float[1,4,6,6] Y) {
            A = Conv (X, Wa, Ba)
            D = Conv <group=8, pads=[1,1,1,1]> (A, Wd, Bd)
            R = Relu (D)
            Y = Conv (R, Wy)
        }""",
        {"Wa": (8, 4, 1, 1), "Ba": (8,), "Wd": (8, 1, 3, 3), "Bd": (8,), "Wy": (4, 8, 1, 1)},
        {"Conv 'A'": (8, [8], {"Conv 'Y'"}, None)},
    ),
    "grouped": Case(
        """g (float[1,4,6,6] X) => (float[1,4,6,6] Y) {
            A = Conv (X, Wa)
            G = Conv <group=2, pads=[1,1,1,1]> (A, Wg, Bg)
            Y = Conv (G, Wy)
        }""",
        {"Wa": (8, 4, 1, 1), "Wg": (12, 4, 3, 3), "Bg": (12,), "Wy": (4, 12, 1, 1)},
        {"Conv 'A'": (8, [4, 4], {"Conv 'G'"}, None), "Conv 'G'": (12, [6, 6], {"Conv 'Y'"}, None)},
    ),
    "se-block": Case(
        """g (float[1,8,6,6] X) => (float[1,4,6,6] Y) {
            A = Conv (X, Wa)
            R = Relu (A)
            G = GlobalAveragePool (R)
            S1 = Conv (G, Ws1, Bs1)
            S1r = Relu (S1)
            S2 = Conv (S1r, Ws2, Bs2)
            Gate = HardSigmoid (S2)
            M = Mul (R, Gate)
            Y = Conv (M, Wy)
        }""",
        {
            "Wa": (16, 8, 1, 1),
            "Ws1": (4, 16, 1, 1),
            "Bs1": (4,),
            "Ws2": (16, 4, 1, 1),
            "Bs2": (16,),
            "Wy": (4, 16, 1, 1),
        },
        {
            "Conv 'A' (+1)": (16, [16], {"Conv 'S1'", "Conv 'Y'"}, None),
            "Conv 'S1'": (4, [4], {"Conv 'S2'"}, None),
        },
    ),
    "spatial-gate": Case(
        """g (float[1,8,6,6] X) => (float[1,4,6,6] Y) {
            A = Conv (X, Wa)
            T = ReduceMean <axes=[1], keepdims=1> (A)
            Gate = Sigmoid (T)
            M = Mul (A, Gate)
            Y = Conv (M, Wy)
        }""",
        {"Wa": (16, 8, 1, 1), "Wy": (4, 16, 1, 1)},
        {"Conv 'A'": (16, [16], {"Conv 'Y'"}, None)},
    ),
    "conv-gate": Case(
        """g (float[1,8,6,6] X) => (float[1,4,6,6] Y) {
            A = Conv (X, Wa, Ba)
            G1 = Conv (X, Wg)
            Gate = Sigmoid (G1)
            M = Mul (A, Gate)
            Y = Conv (M, Wy)
        }""",
        {"Wa": (16, 8, 1, 1), "Ba": (16,), "Wg": (1, 8, 1, 1), "Wy": (4, 16, 1, 1)},
        {
            "Conv 'A'": (16, [16], {"Conv 'Y'"}, None),
            "Conv 'G1'": (1, [1], set(), "Mul 'M' broadcasts a single channel over 16"),
        },
    ),
    "matmul-ffn": Case(
        """g (float[2,3,16] X) => (float[2,3,16] Y) {
            H = MatMul (X, W1)
            Hb = Add (H, b1)
            R = Relu (Hb)
            Y = MatMul (R, W2)
        }""",
        {"W1": (16, 32), "b1": (32,), "W2": (32, 16)},
        {"MatMul 'H'": (32, [32], {"MatMul 'Y'"}, None)},
    ),
    "ffn-gelu-erf": Case(
        """g (float[2,3,16] X) => (float[2,3,16] Y) {
            H = MatMul (X, W1)
            Hb = Add (b1, H)
            D = Div (Hb, sqrt2)
            E = Erf (D)
            E1 = Add (E, unit)
            G = Mul (Hb, E1)
            G2 = Mul (G, half)
            Y = MatMul (G2, W2)
        }""",
        {"W1": (16, 32), "b1": (32,), "W2": (32, 16)},
        {"MatMul 'H'": (32, [32], {"MatMul 'Y'"}, None)},
    ),
    "attention-heads": Case(
        ATTENTION.format(tail="Y = Add (O0, Bo)"),
        {
            **dict.fromkeys(("Wq", "Wk", "Wv", "Wo"), (16, 16)),
            **dict.fromkeys(("Bq", "Bk", "Bv", "Bo"), (16,)),
        },
        {
            "MatMul 'Q0' (+2)": (4, [4], {"MatMul 'O0'"}, None),
            "MatMul 'O0'": (16, [16], set(), "reaches graph output 'Y'"),
        },
    ),
    "attention-residual-stream": Case(
        ATTENTION.format(tail="R = Add (X, O0)\n    Y = LayerNormalization <axis=-1> (R, Lg, Lb)"),
        {
            **dict.fromkeys(("Wq", "Wk", "Wv", "Wo"), (16, 16)),
            **dict.fromkeys(("Bq", "Bk", "Bv", "Lg", "Lb"), (16,)),
        },
        {
            "MatMul 'Q0' (+2)": (4, [4], {"MatMul 'O0'"}, None),
            "MatMul 'O0'": (16, [16], set(), "Add 'R' couples channels with 'X', which no prunable layer makes"),
        },
    ),
    "attention-dynamic": Case(
        ATTENTION_DYNAMIC.format(merge="T4 = Concat <axis=0> (Bu, Su, minus1)"),
        QKVO,
        {"MatMul 'Q0' (+2)": (4, [4], {"MatMul 'Y'"}, None)},
    ),
    "attention-reads-head-count": Case(
        ATTENTION_DYNAMIC.format(
            merge="Hg = Gather <axis=0> (CS, one)\n    Hu = Unsqueeze (Hg, axis0)\n    HD = Mul (Hu, four)\n"
            "    T4 = Concat <axis=0> (Bu, Su, HD)"
        ),
        QKVO,
        {"MatMul 'Q0' (+2)": (4, [4], set(), "Reshape 'C3' has a non-constant target or unknown shapes")},
    ),
    "transpose-matmul": Case(
        """g (float[1,8,4,4] X) => (float[1,4,4,6] Y) {
            A = Conv (X, Wa, Ba)
            T = Transpose <perm=[0,2,3,1]> (A)
            Y = MatMul (T, Wm)
        }""",
        {"Wa": (16, 8, 1, 1), "Ba": (16,), "Wm": (16, 6)},
        {"Conv 'A'": (16, [16], {"MatMul 'Y'"}, None)},
    ),
    "graph-output": Case(
        """g (float[1,8,6,6] X) => (float[1,16,6,6] A) {
            A = Conv (X, Wa)
        }""",
        {"Wa": (16, 8, 1, 1)},
        {"Conv 'A'": (16, [16], set(), "reaches graph output 'A'")},
    ),
    "graph-input-coupled": Case(
        """g (float[1,8,6,6] X) => (float[1,4,6,6] Y) {
            A = Conv (X, Wa)
            S = Add (A, X)
            Y = Conv (S, Wy)
        }""",
        {"Wa": (8, 8, 1, 1), "Wy": (4, 8, 1, 1)},
        {"Conv 'A'": (8, [8], set(), "Add 'S' couples channels with 'X', which no prunable layer makes")},
    ),
    "unknown-op": Case(
        """g (float[1,8,6,6] X) => (float[1,4,6,6] Y) {
            A = Conv (X, Wa)
            L = LRN <size=3> (A)
            Y = Conv (L, Wy)
        }""",
        {"Wa": (8, 8, 1, 1), "Wy": (4, 8, 1, 1)},
        {"Conv 'A'": (8, [8], set(), "LRN 'L' has no channel rule")},
    ),
}

CONSTANTS = {
    "sizes": np.array([6, 10], dtype=np.int64),
    "starts": np.array([4], dtype=np.int64),
    "ends": np.array([12], dtype=np.int64),
    "axes": np.array([1], dtype=np.int64),
    "shape": np.array([2, 72], dtype=np.int64),
    "split_heads": np.array([0, 0, 4, 4], dtype=np.int64),
    "merge_heads": np.array([0, 0, 16], dtype=np.int64),
    "scale": np.array(0.5, dtype=np.float32),
    "split_any": np.array([0, 0, -1, 4], dtype=np.int64),
    "zero": np.array(0, dtype=np.int64),
    "one": np.array(1, dtype=np.int64),
    "two": np.array(2, dtype=np.int64),
    "four": np.array([4], dtype=np.int64),
    "minus1": np.array([-1], dtype=np.int64),
    "minus1s": np.array([-1, -1, -1, -1], dtype=np.int64),
    "ones4": np.array([1, 1, 1, 1], dtype=np.int64),
    "axis0": np.array([0], dtype=np.int64),
    "axes12": np.array([1, 2], dtype=np.int64),
    "sqrt2": np.array(np.sqrt(2.0), dtype=np.float32),
    "unit": np.array(1.0, dtype=np.float32),
    "half": np.array(0.5, dtype=np.float32),
}


def build(name: str, seed: int = 0) -> onnx.ModelProto:
    """The case's graph with random weights (variances positive), checked by onnx."""
    case = CASES[name]
    model = onnx.parser.parse_model(f"{HEADER}\n{case.text}")
    rng = np.random.default_rng(seed)
    for weight, shape in case.weights.items():
        array = rng.standard_normal(shape).astype(np.float32)
        if weight == "v":
            array = np.abs(array) + 0.5
        model.graph.initializer.append(onnx.numpy_helper.from_array(array, weight))
    used = {i for node in model.graph.node for i in node.input}
    for constant, array in CONSTANTS.items():
        if constant in used:
            model.graph.initializer.append(onnx.numpy_helper.from_array(array, constant))
    onnx.checker.check_model(model, full_check=True)
    return model


def feed(model: onnx.ModelProto, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    inputs = {}
    for value in model.graph.input:
        shape = [d.dim_value if d.HasField("dim_value") else 3 for d in value.type.tensor_type.shape.dim]
        inputs[value.name] = rng.standard_normal(shape).astype(np.float32)
    return inputs


def assert_same_function(original: onnx.ModelProto, changed: onnx.ModelProto, context: str) -> None:
    """Outputs equal within 1e-5 x the output scale (float sums run in another order)."""
    inputs = feed(original)
    want, got = run(original, inputs), run(changed, inputs)
    scale = max(float(np.abs(w).max()) for w in want)
    assert_outputs_close(want, got, rtol=1e-5, atol=1e-5 * scale, context=context)


def by_label(plan: channels.ChannelPlan) -> dict[str, channels.ChannelGroup]:
    return {group.label: group for group in plan.groups}


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
        before = {t.name: onnx.numpy_helper.to_array(t) for t in original.graph.initializer}
        after = {t.name: onnx.numpy_helper.to_array(t) for t in changed.graph.initializer}
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
    model_proto = onnx.parser.parse_model(f"{HEADER}\n{text}")
    rng = np.random.default_rng(0)
    for name, shape in {
        "Wa": (16, 8, 1, 1),
        "Wb": (16, 8, 1, 1),
        "k": (1, 16, 1, 1),
        "Wy": (4, 16, 1, 1),
        "Wz": (4, 16, 1, 1),
    }.items():
        model_proto.graph.initializer.append(
            onnx.numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
        )
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
    proto = onnx.parser.parse_model(f"{HEADER}\n{text}")
    rng = np.random.default_rng(0)
    for name, shape in {"Wa": (16, 8, 1, 1), "Wy": (4, 16, 1, 1)}.items():
        proto.graph.initializer.append(
            onnx.numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
        )
    model = ir.serde.deserialize_model(proto)
    group = by_label(channels.analyze(model, "permute"))["Conv 'A'"]
    assert [r.reason for r in group.reasons] == ["'A' is read inside a subgraph (Relu)"]


# A Conv chain (A -> Relu -> B) inside an If branch, a Loop body and a model-local function, with
# (``main=True``) a Conv chain P -> Relu -> Q of the main graph beside it. The analysis enters
# neither subgraphs nor functions: their producers are listed in ``plan.outside`` with where they are.
SCOPED_HEADER = '<ir_version: 8, opset_import: ["" : 17, "local" : 1]>'
SCOPED_MAIN = """
        P = Conv (X, Wp)
        PR = Relu (P)
        Z = Conv (PR, Wq)"""
SCOPED = {
    "if": """g (float[1,8,6,6] X, bool C) => (float[1,8,6,6] Y{z}) {{{main}
        Y = If (C) <
            then_branch = t () => (float[1,8,6,6] B) {{ A = Conv (X, Wa)  R = Relu (A)  B = Conv (R, Wb) }},
            else_branch = e () => (float[1,8,6,6] N) {{ N = Neg (X) }}
        >
    }}""",
    "loop": """g (float[1,8,6,6] X, bool C) => (float[1,8,6,6] Y{z}) {{{main}
        T = Constant <value = int64 {{2}}> ()
        Y = Loop (T, C, X) <body = body (int64 i, bool c, float[1,8,6,6] x) => (bool co, float[1,8,6,6] B) {{
            co = Identity (c)
            A = Conv (x, Wa)
            R = Relu (A)
            B = Conv (R, Wb)
        }}>
    }}""",
    "function": """g (float[1,8,6,6] X, bool C) => (float[1,8,6,6] Y{z}) {{{main}
        Y = local.ConvChain (X, Wa, Wb)
    }}
    <domain: "local", opset_import: ["" : 17]>
    ConvChain (x, wa, wb) => (B) {{
        A = Conv (x, wa)
        R = Relu (A)
        B = Conv (R, wb)
    }}""",
}
SCOPED_WHERE = {
    "if": "inside subgraph 't' of If 'Y'",
    "loop": "inside subgraph 'body' of Loop 'Y'",
    "function": "inside model-local function 'local::ConvChain'",
}


def build_scoped(name: str, main: bool) -> onnx.ModelProto:
    """The scoped case ``name`` with random weights, checked by onnx."""
    text = SCOPED[name].format(main=SCOPED_MAIN if main else "", z=", float[1,4,6,6] Z" if main else "")
    model = onnx.parser.parse_model(f"{SCOPED_HEADER}\n{text}")
    rng = np.random.default_rng(0)
    shapes = {"Wa": (16, 8, 1, 1), "Wb": (8, 16, 1, 1), **({"Wp": (16, 8, 1, 1), "Wq": (4, 16, 1, 1)} if main else {})}
    for weight, shape in shapes.items():
        model.graph.initializer.append(
            onnx.numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), weight)
        )
    onnx.checker.check_model(model, full_check=True)
    return model


def scoped_feeds(model: onnx.ModelProto) -> list[dict[str, np.ndarray]]:
    """Inputs that take each way through the construct (If branch, Loop run or not)."""
    x = np.random.default_rng(1).standard_normal((1, 8, 6, 6)).astype(np.float32)
    return [{"X": x, "C": np.array(flag)} for flag in (True, False)]


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
