"""One self-contained HTML page from an onnxshrink JSON report: plotly.js inlined, no network needed."""

from __future__ import annotations

import html
import json
from collections.abc import Iterable, Sequence
from typing import Any

import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

from onnxshrink.report import figures

_TABLE_ROWS = 300  # longer tables are cut, saying how many rows were left out
_CONFIG = {"displaylogo": False, "responsive": True}
_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; padding: 0 1em; max-width: 1200px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.9em; }
td, th { border: 1px solid #ddd; padding: 0.2em 0.6em; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.ok { color: #187a2f; } .bad { color: #b3261e; } .note { color: #666; }
details { margin: 0.5em 0; }
"""


def _cell(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return f"<td>{html.escape(str(value))}</td>"
    if isinstance(value, int):
        return f'<td class="num">{value:,}</td>'
    if isinstance(value, float):
        return f'<td class="num">{value:.6g}</td>'
    return f"<td>{html.escape(str(value))}</td>"


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    rows = list(rows)
    head = "".join(f"<th>{html.escape(name)}</th>" for name in header)
    body = "".join("<tr>" + "".join(_cell(value) for value in row) + "</tr>" for row in rows[:_TABLE_ROWS])
    more = len(rows) - _TABLE_ROWS
    note = f'<p class="note">{more} more rows in the JSON report.</p>' if more > 0 else ""
    return f"<table><tr>{head}</tr>{body}</table>{note}"


def _skipped(stats: dict[str, Any], what: str) -> str:
    skipped = stats.get("skipped") or {}
    if not skipped:
        return ""
    table = _table([what, "reason"], sorted(skipped.items()))
    return f"<details><summary>{len(skipped)} left alone, with reasons</summary>{table}</details>"


def _plot(figure: go.Figure | None, div_id: str) -> str:
    if figure is None:
        return ""
    return figure.to_html(full_html=False, include_plotlyjs=False, div_id=div_id, config=_CONFIG)


def _summary(report: dict[str, Any]) -> str:
    before, after = report.get("input") or {}, report.get("output") or {}
    keys = [key for key in ("nodes", "params", "bytes", "macs") if key in before or key in after]
    rows = [[key, before.get(key), after.get(key)] for key in keys]
    paths = f"<p>{html.escape(str(before.get('path', '?')))} → {html.escape(str(after.get('path', '?')))}</p>"
    pipeline = ", ".join(str(step.get("name")) for step in report.get("pipeline") or [])
    verdict = _verdict(report.get("verification"))
    version = html.escape(str(report.get("onnxshrink_version", "?")))
    return f"{paths}<p>pipeline: {html.escape(pipeline)} · onnxshrink {version}</p><p>{verdict}</p>" + _table(
        ["", "input", "output"], rows
    )


def _verdict(verification: dict[str, Any] | None) -> str:
    if verification is None:
        return '<span class="note">not verified (--no-verify)</span>'
    if "skipped" in verification:
        return f'<span class="note">not verified: {html.escape(str(verification["skipped"]))}</span>'
    passed = verification.get("passed", verification.get("within_tolerance"))
    css, word = ("ok", "verified") if passed else ("bad", "verification failed")
    where = html.escape(f"{verification.get('provider')} with {verification.get('inputs')}")
    line = f'<span class="{css}">{word}</span> on {where}: min cosine {verification.get("min_cosine", 0):.6f}'
    if verification.get("accuracy_reference") is not None:
        line += f", accuracy {verification['accuracy_reference']:.4f} → {verification['accuracy_candidate']:.4f}"
    return line


def _passes(report: dict[str, Any]) -> str:
    rows = [
        [
            f"{index}. {record.get('name')}",
            record.get("modified"),
            record.get("nodes_before"),
            record.get("nodes_after"),
            record.get("bytes_before"),
            record.get("bytes_after"),
            len((record.get("stats") or {}).get("skipped") or {}),
            round(float(record.get("seconds") or 0.0), 3),
        ]
        for index, record in enumerate(report.get("passes") or [], 1)
    ]
    header = ["pass", "modified", "nodes before", "after", "bytes before", "after", "left alone", "seconds"]
    return _plot(figures.pass_figure(report), "plot-passes") + _table(header, rows)


def _pass_sections(report: dict[str, Any]) -> list[str]:
    sections = []
    for index, record in enumerate(report.get("passes") or [], 1):
        name, stats = record.get("name"), record.get("stats") or {}
        title = f"{index}. {name}"
        if name == "prune":
            layers = stats.get("layers") or {}
            rows = [[layer, info.get("sparsity"), info.get("kept_magnitude")] for layer, info in sorted(layers.items())]
            body = _plot(figures.sensitivity_figure(stats), f"plot-sensitivity-{index}")
            body += _table(["layer", "sparsity", "kept magnitude"], rows) + _skipped(stats, "layer")
        elif name == "prune-channels":
            body = _plot(figures.channels_figure(stats), f"plot-channels-{index}") + _skipped(stats, "group")
        elif name == "quantize":
            nodes = stats.get("nodes") or {}
            rows = [
                [
                    node,
                    info.get("op"),
                    info.get("weight", ""),
                    " ".join(str(i.get("dtype")) for i in info.get("inputs") or []),
                    (info.get("output") or {}).get("dtype", "float"),
                ]
                for node, info in sorted(nodes.items())
            ]
            table = _table(["node", "op", "weight", "inputs", "output"], rows)
            body = _plot(figures.quantize_figure(stats), f"plot-quantize-{index}")
            body += f"<details open><summary>{len(nodes)} quantized</summary>{table}</details>"
            body += _skipped(stats, "node")
        else:
            continue
        sections.append(f'<h2 id="pass-{index}">{html.escape(title)}</h2>{body}')
    return sections


def _verification(report: dict[str, Any]) -> str:
    verification = report.get("verification") or {}
    outputs = verification.get("outputs") or []
    header = ["output", "max abs", "max rel", "cosine", "top-1 agreement", "within tolerance"]
    rows = [
        [
            o.get("name"),
            o.get("max_abs"),
            o.get("max_rel"),
            o.get("cosine"),
            o.get("top1_agreement"),
            o.get("within_tolerance"),
        ]
        for o in outputs
    ]
    return _plot(figures.verification_figure(report), "plot-verification") + (_table(header, rows) if rows else "")


def render_html(report: dict[str, Any], title: str = "onnxshrink report") -> str:
    """Renders a report (the dict ``onnxshrink run --report`` writes as JSON) as one HTML page.

    Args:
        report: The JSON report as loaded.
        title: The page title.

    Returns:
        The page; it carries plotly.js inline, so it opens offline, and the report itself as JSON
        in ``<script type="application/json" id="onnxshrink-report">``.
    """
    sections = [
        f"<h1>{html.escape(title)}</h1>",
        _summary(report),
        "<h2>Passes</h2>",
        _passes(report),
        *_pass_sections(report),
        "<h2>Verification</h2>",
        _verification(report),
    ]
    # The whole JSON report rides along (a page written by `run --report x.html` is the only copy);
    # "<" is escaped so no string in it can close the script element.
    data = json.dumps(report, sort_keys=True, default=str).replace("<", "\\u003c")
    sections.append(f'<script type="application/json" id="onnxshrink-report">{data}</script>')
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style>"
        f'<script type="text/javascript">{get_plotlyjs()}</script></head>\n<body>\n'
        + "\n".join(sections)
        + "\n</body></html>\n"
    )
