"""``inspect``'s MACs inside If/Loop bodies, and the input sizes they were counted for."""

from __future__ import annotations

import json

import onnx_ir as ir
from click.testing import CliRunner
from helpers import DIGITS, fetch, get_real_model, parse_ir_model, random_arrays

from onnxshrink.cli import main
from onnxshrink.inspect.summary import inspect_model

# y = x @ w1 (4x8x16 = 512 MACs) in the then branch, x @ w2 (4x8x2 = 64) in the else branch.
IF_MODEL = """<ir_version: 10, opset_import: ["" : 21]>
g (bool c, float[4, 8] x) => (float[4, N] y) <float[8, 16] w1, float[8, 2] w2> {
    y = If (c) <
        then_branch = t () => (float[4, 16] a) { a = MatMul(x, w1) },
        else_branch = e () => (float[4, 2] b) { b = MatMul(x, w2) }
    >
}"""

# A Loop whose body does x @ w (4x8x8 = 256 MACs) per iteration.
LOOP_MODEL = """<ir_version: 10, opset_import: ["" : 21]>
g (int64 {trip_source}, float[4, 8] x) => (float[4, 8] y) <float[8, 8] w{trip_init}> {{
    cond = Constant <value = bool {{1}}> ()
    y = Loop ({trip}, cond, x) <
        body = b (int64 i, bool c_in, float[4, 8] h) => (bool c_out, float[4, 8] h_out) {{
            c_out = Identity(c_in)
            h_out = MatMul(h, w)
        }}
    >
}}"""


def test_if_branches_are_listed_and_the_larger_counted() -> None:
    info = inspect_model(parse_ir_model(IF_MODEL, initializers=random_arrays({"w1": (8, 16), "w2": (8, 2)})))
    branches = {sub["graph"]: (sub["macs"], sub["times"]) for sub in info["macs_subgraphs"]}
    assert branches == {"If->y/then_branch": (512, 1), "If->y/else_branch": (64, 0)}
    assert info["macs"] == 512 and info["macs_unknown_nodes"] == 0
    assert {layer["graph"] for layer in info["layers"]} == {"If->y/then_branch", "If->y/else_branch"}


def test_loop_with_constant_trip_count_counts_the_body_per_iteration() -> None:
    text = LOOP_MODEL.format(trip_source="unused", trip_init=", int64 n = {3}", trip="n")
    info = inspect_model(parse_ir_model(text, initializers=random_arrays({"w": (8, 8)})))
    assert info["macs"] == 3 * 256 and info["macs_notes"] == []
    (body,) = info["macs_subgraphs"]
    assert body["times"] == 3 and body["why"] == "constant trip count"


def test_loop_with_runtime_trip_count_counts_the_body_once_and_says_so() -> None:
    text = LOOP_MODEL.format(trip_source="n", trip_init="", trip="n")
    info = inspect_model(parse_ir_model(text, initializers=random_arrays({"w": (8, 8)})))
    assert info["macs"] == 256
    assert info["macs_notes"] == ["Loop 'Loop->y': trip count not constant, body counted once"]


def test_silero_vad_macs_inside_if_bodies() -> None:
    path = fetch(get_real_model("silero-vad"))
    args = ["inspect", str(path), "--shape", "input=1,512", "--shape", "state=2,1,128"]
    result = CliRunner().invoke(main, [*args, "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    top = {sub["graph"]: sub for sub in info["macs_subgraphs"] if sub["graph"].count("/") == 1}
    assert set(top) == {"If_0/then_branch", "If_0/else_branch"}  # 16 kHz and 8 kHz networks
    assert all(sub["macs"] > 0 for sub in top.values())
    assert info["macs"] >= max(sub["macs"] for sub in top.values()) > 0  # was 0: every Conv is in a branch
    assert sum(1 for layer in info["layers"] if layer["op"] == "Conv") == 12
    text = CliRunner().invoke(main, args).stdout
    assert "If_0/then_branch: MACs" in text and "If_0/else_branch: MACs" in text


def test_assumed_dynamic_dims_are_stated() -> None:
    text = CliRunner().invoke(main, ["inspect", str(DIGITS)]).stdout
    assert "MACs counted for inputs input [N=1 (assumed), 1, 8, 8]; dynamic dims taken as 1" in text
    result = CliRunner().invoke(main, ["inspect", str(DIGITS), "--shape", "input=4,1,8,8", "--json"])
    info = json.loads(result.stdout)
    assert info["assumed_dims"]["input"][0] == {"declared": "N", "used": 4, "source": "--shape"}
    assert info["assumed_dims"]["input"][1] == {"declared": 1, "used": 1, "source": "model"}
    assert info["macs"] == 4 * inspect_model(ir.load(DIGITS))["macs"]


def test_scan_body_counts_once_per_step_of_a_known_scan_length() -> None:
    # 5 steps along axis 0 of xs, each h [1, 8] @ w [8, 8] = 64 MACs.
    text = """<ir_version: 10, opset_import: ["" : 21]>
    g (float[1, 8] h0, float[5, 8] xs) => (float[1, 8] h, float[5, 8] ys) <float[8, 8] w> {
        h, ys = Scan <num_scan_inputs = 1,
            body = b (float[1, 8] h_in, float[8] x) => (float[1, 8] h_out, float[8] y) {
                h_out = MatMul(h_in, w)
                y = Identity(x)
            }
        > (h0, xs)
    }"""
    info = inspect_model(parse_ir_model(text, initializers=random_arrays({"w": (8, 8)})))
    (body,) = info["macs_subgraphs"]
    assert (body["macs"], body["times"], body["why"]) == (64, 5, "scan length")
    assert info["macs"] == 5 * 64
