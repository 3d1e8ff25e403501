"""The ``auto`` report as one self-contained HTML page (``--report FILE.html``).

The page shows the goal, the chosen trial and what it misses, its per-unit allocation, the
predicted front with a plot of size against predicted damage (inline SVG, no script), and every
trial. The JSON report holds the same facts.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

_STYLE = (
    "body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;margin:1em 0}"
    "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right;font-size:90%}th{background:#eee}"
    "tr.chosen{background:#dfd}tr.failed{color:#a00}td.text{text-align:left}"
)
_PLOT_W, _PLOT_H, _PAD = 560, 260, 40


def _cell(value: Any) -> str:
    if value is None:
        return "<td></td>"
    if isinstance(value, float):
        return f"<td>{value:.4g}</td>"
    if isinstance(value, (int, bool)):
        return f"<td>{value}</td>"
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return f'<td class="text">{html.escape(text)}</td>'


def _table(headers: Sequence[str], rows: Iterable[tuple[str, Sequence[Any]]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join(f'<tr class="{cls}">' + "".join(_cell(v) for v in row) + "</tr>" for cls, row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _plot(points: Sequence[Mapping[str, Any]], trials: Sequence[Mapping[str, Any]]) -> str:
    """Predicted front (circles) and measured trials (crosses): bytes against predicted damage."""
    pairs = [(p["size"], p["damage"], "front") for p in points]
    pairs += [(t["size"], t["predicted"]["damage"], "trial") for t in trials if t.get("size") is not None]
    if not pairs:
        return ""
    xs, ys = [p[0] for p in pairs], [p[1] for p in pairs]
    x0, x1, y0, y1 = min(xs), max(xs) or 1, min(ys), max(ys)

    def at(x: float, y: float) -> tuple[float, float]:
        fx = (x - x0) / (x1 - x0) if x1 > x0 else 0.5
        fy = (y - y0) / (y1 - y0) if y1 > y0 else 0.5
        return _PAD + fx * (_PLOT_W - 2 * _PAD), _PLOT_H - _PAD - fy * (_PLOT_H - 2 * _PAD)

    marks = []
    for x, y, kind in pairs:
        cx, cy = at(x, y)
        if kind == "front":
            marks.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="4" fill="none" stroke="#36c"/>')
        else:
            marks.append(f'<path d="M{cx - 4:.1f},{cy - 4:.1f}l8,8m0,-8l-8,8" stroke="#c33"/>')
    axes = (
        f'<text x="{_PLOT_W / 2}" y="{_PLOT_H - 8}" text-anchor="middle">bytes ({x0}..{x1})</text>'
        f'<text x="12" y="{_PLOT_H / 2}" transform="rotate(-90 12 {_PLOT_H / 2})" text-anchor="middle">'
        f"predicted damage ({y0:.3g}..{y1:.3g})</text>"
    )
    return f'<svg width="{_PLOT_W}" height="{_PLOT_H}" style="border:1px solid #ccc">{axes}{"".join(marks)}</svg>'


def to_html(report: Mapping[str, Any]) -> str:
    """The report as an HTML page."""
    chosen = report["chosen"]
    trials = report["trials"]
    best = trials[chosen["trial"]]
    verdict = "meets the goal" if chosen["feasible"] else "misses: " + "; ".join(chosen["misses"].values())
    goal = {k: v for k, v in report["goal"].items() if v is not None}
    allocation = [
        ("", [knob, name, value]) for knob, table in chosen["settings"].items() for name, value in table.items()
    ]
    front = [
        ("", [i, p["size"], p["macs"], p.get("latency_ms"), p["damage"], p.get("trials")])
        for i, p in enumerate(report["front"])
    ]
    rows = [
        (
            "chosen" if t["number"] == chosen["trial"] else "failed" if t.get("error") else "",
            [
                *(t["number"], t.get("phase"), t.get("size"), t.get("macs_ratio"), t.get("speedup"), t.get("loss")),
                *(t["predicted"]["size"], t["predicted"]["damage"], t.get("knobs"), t.get("seconds"), t.get("error")),
            ],
        )
        for t in trials
    ]
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>onnxshrink auto</title><style>{_STYLE}</style>",
        "</head><body><h1>onnxshrink auto</h1>",
        f"<p>input {html.escape(str(report['input']['path']))}: {report['input']['size']} bytes, "
        f"{report['input']['macs']} MACs. Goal: {html.escape(json.dumps(goal))}.</p>",
        f"<p>Chosen: trial {best['number']}, {best['size']} bytes, loss {best['loss']:.4g}; "
        f"{html.escape(verdict)}.</p>",
        "<h2>Allocation</h2>",
        _table(["knob", "unit", "setting"], allocation),
        "<h2>Predicted front and trials</h2>",
        _plot(report["front"], [t for t in trials if t.get("error") is None]),
        _table(["point", "bytes", "MACs", "latency ms", "damage", "trials"], front),
        "<h2>Trials</h2>",
        _table(
            [
                *("#", "phase", "bytes", "MACs ratio", "speedup", "loss", "predicted bytes", "predicted damage"),
                *("knobs", "seconds", "error"),
            ],
            rows,
        ),
        "</body></html>\n",
    ]
    return "".join(parts)
