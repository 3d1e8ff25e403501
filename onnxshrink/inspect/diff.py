"""``onnxshrink inspect A B``: two models side by side, totals and layers matched by node name."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from onnxshrink.inspect.names import shorten_all
from onnxshrink.inspect.summary import describe_assumed_dims

_TOTALS = ("nodes", "params", "bytes", "bytes_compressed", "macs", "float_weight_sparsity", "quantized_weight_share")
_LAYER_FIELDS = ("op", "shape", "precision", "sparsity", "macs", "bytes")
_NAME_WIDTH = 36


def _key(layer: Mapping[str, Any]) -> str:
    return f"{layer['graph']}/{layer['node']}" if layer["graph"] else layer["node"]


def diff_inspections(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    """Totals as ``[a, b]`` pairs and one row per layer name, with the side(s) it exists in.

    Layers are matched by node name (with the subgraph path); rows keep A's order, then the
    layers only B has.
    """
    left = {_key(layer): layer for layer in a["layers"]}
    right = {_key(layer): layer for layer in b["layers"]}
    rows = []
    for name in [*left, *(n for n in right if n not in left)]:
        sides = {
            side: {f: layers[name][f] for f in _LAYER_FIELDS} if name in layers else None
            for side, layers in (("a", left), ("b", right))
        }
        where = "both" if name in left and name in right else ("only a" if name in left else "only b")
        rows.append({"node": name, "in": where, **sides})
    return {
        "totals": {key: [a[key], b[key]] for key in _TOTALS},
        "macs_by_op": {
            op: [a["macs_by_op"].get(op, 0), b["macs_by_op"].get(op, 0)]
            for op in sorted({*a["macs_by_op"], *b["macs_by_op"]})
        },
        "assumed_dims": [a["assumed_dims"], b["assumed_dims"]],
        "layers": rows,
        "only_a": sum(1 for r in rows if r["in"] == "only a"),
        "only_b": sum(1 for r in rows if r["in"] == "only b"),
    }


def _cell(layer: Mapping[str, Any] | None) -> str:
    if layer is None:
        return f"{'(absent)':>56}"
    shape = "x".join(map(str, layer["shape"]))
    sparsity = "-" if layer["sparsity"] is None else f"{layer['sparsity']:.1%}"
    macs = "-" if layer["macs"] is None else f"{layer['macs']:,}"
    return f"{shape:>14} {layer['precision']:>8} {sparsity:>6} {macs:>12} {layer['bytes']:>10,}"


def format_diff(diff: Mapping[str, Any], a_name: str, b_name: str) -> str:
    """Text of :func:`diff_inspections`: totals, then the layer table with A's and B's columns."""
    lines = [f"A {a_name}", f"B {b_name}", f"{'':24} {'A':>16} {'B':>16}"]
    for key, (x, y) in diff["totals"].items():
        if isinstance(x, float):
            lines.append(f"{key:24} {x:>16.2%} {y:>16.2%}")
        else:
            lines.append(f"{key:24} {x:>16,} {y:>16,}")
    lines.extend(f"MACs {op:19} {x:>16,} {y:>16,}" for op, (x, y) in diff["macs_by_op"].items())
    for side, assumed in zip("AB", diff["assumed_dims"], strict=True):
        if described := describe_assumed_dims(assumed):
            lines.append(f"{side}: {described}")
    rows = diff["layers"]
    if rows:
        names = shorten_all((row["node"] for row in rows), _NAME_WIDTH)
        width = max(len(n) for n in names.values())
        column = f"{'shape':>14} {'prec':>8} {'sparse':>6} {'MACs':>12} {'bytes':>10}"
        lines.append(
            f"layers matched by node name: {len(rows) - diff['only_a'] - diff['only_b']} in both, "
            f"{diff['only_a']} only in A, {diff['only_b']} only in B"
        )
        lines.append(f"  {'node':{width}} | A{column[1:]} | B{column[1:]}")
        for row in rows:
            lines.append(f"  {names[row['node']]:{width}} | {_cell(row['a'])} | {_cell(row['b'])}")
    return "\n".join(lines)
