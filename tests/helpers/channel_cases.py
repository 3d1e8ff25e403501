"""Channel-analysis cases shared by the channel, sort and prune-channels tests.

:data:`CASES`: one tiny ONNX-text graph per channel rule, with the groups the analysis must find;
:func:`build` gives one with random weights. :data:`SCOPED`: a Conv chain inside an If branch, a
Loop body and a model-local function; :func:`build_scoped` and :func:`scoped_feeds`.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx

from onnxshrink.passes import channels

from .feeds import random_feed
from .models import parse_model, random_arrays
from .numerics import assert_close

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
    weights = random_arrays(case.weights, seed=seed)
    if "v" in weights:
        weights["v"] = np.abs(weights["v"]) + 0.5
    used = {i for node in parse_model(case.text, check=False).graph.node for i in node.input}
    constants = {name: array for name, array in CONSTANTS.items() if name in used}
    return parse_model(case.text, initializers={**weights, **constants})


def case_feed(model: onnx.ModelProto, seed: int = 1) -> dict[str, np.ndarray]:
    """Inputs for a case: seed 1, dynamic dims 3."""
    return random_feed(model, seed=seed, dynamic_size=3)


def assert_same_function(original: onnx.ModelProto, changed: onnx.ModelProto, context: str) -> None:
    """Outputs equal within rtol 1e-5 and 1e-5 x the output scale.

    Moving channels reorders float sums, whose rounding grows with the values; there is no
    absolute floor besides the scaled one.
    """
    assert_close(original, changed, case_feed(original), atol=0.0, scaled_atol=1e-5, context=context)


def by_label(plan: channels.ChannelPlan) -> dict[str, channels.ChannelGroup]:
    """The plan's groups by label."""
    return {group.label: group for group in plan.groups}


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
    shapes = {"Wa": (16, 8, 1, 1), "Wb": (8, 16, 1, 1), **({"Wp": (16, 8, 1, 1), "Wq": (4, 16, 1, 1)} if main else {})}
    return parse_model(f"{SCOPED_HEADER}\n{text}", initializers=random_arrays(shapes, seed=0))


def scoped_feeds(model: onnx.ModelProto) -> list[dict[str, np.ndarray]]:
    """Inputs that take each way through the construct (If branch, Loop run or not)."""
    x = np.random.default_rng(1).standard_normal((1, 8, 6, 6)).astype(np.float32)
    return [{"X": x, "C": np.array(flag)} for flag in (True, False)]
