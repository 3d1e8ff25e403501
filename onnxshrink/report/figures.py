"""Plotly figures drawn from an onnxshrink JSON report; each returns None when it has nothing to show.

Only this module and ``onnxshrink.report.page`` import plotly, and only when a report is rendered.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

_COLORS = qualitative.Plotly
_MEASURES = (
    ("nodes", "nodes"),
    ("bytes", "weight bytes"),
    ("bytes_compressed", "compressed weight bytes"),
    ("macs", "MACs"),
)
_LABEL_CHARS = 48


def short(name: str, limit: int = _LABEL_CHARS) -> str:
    """Shortens a long node name from the middle, so both its ends stay readable."""
    if len(name) <= limit:
        return name
    half = (limit - 1) // 2
    return f"{name[:half]}…{name[-(limit - 1 - half) :]}"


def _layout(figure: go.Figure, title: str, height: int = 360) -> go.Figure:
    figure.update_layout(
        title={"text": title, "x": 0.01},
        height=height,
        margin={"l": 60, "r": 20, "t": 60, "b": 60},
        template="plotly_white",
        legend={"orientation": "h", "y": -0.25},
    )
    return figure


def pass_figure(report: dict[str, Any]) -> go.Figure | None:
    """Nodes, weight bytes and (when the report has them) MACs after each pass, the input first."""
    passes = report.get("passes") or []
    measures = [(key, label) for key, label in _MEASURES if passes and f"{key}_after" in passes[0]]
    if not measures:
        return None
    steps = ["input"] + [f"{index}. {record['name']}" for index, record in enumerate(passes, 1)]
    figure = make_subplots(rows=1, cols=len(measures), subplot_titles=[label for _, label in measures])
    for column, (key, label) in enumerate(measures, 1):
        values = [passes[0].get(f"{key}_before")] + [record.get(f"{key}_after") for record in passes]
        changed = ["", *("changed" if record.get("modified") else "unchanged" for record in passes)]
        figure.add_trace(
            go.Scatter(
                x=steps,
                y=values,
                mode="lines+markers",
                name=label,
                text=changed,
                hovertemplate="%{x}: %{y:,} %{text}<extra>" + label + "</extra>",
                line={"color": _COLORS[column - 1]},
            ),
            row=1,
            col=column,
        )
        figure.update_yaxes(rangemode="tozero", row=1, col=column)
    return _layout(figure, "Model after each pass").update_layout(showlegend=False)


def _interpolate(grid: list[float], values: list[float], at: float) -> float:
    """Linear interpolation of a damage curve at one sparsity (clamped to the grid's ends)."""
    if at <= grid[0]:
        return values[0]
    for i in range(1, min(len(grid), len(values))):
        if at <= grid[i]:
            x0, x1, y0, y1 = grid[i - 1], grid[i], values[i - 1], values[i]
            return y0 + (y1 - y0) * (at - x0) / (x1 - x0) if x1 > x0 else y1
    return values[-1]


def sensitivity_figure(stats: dict[str, Any]) -> go.Figure | None:
    """Per-layer damage curves of ``prune:allocation=sensitivity``, each with its chosen sparsity."""
    grid = (stats.get("allocation") or {}).get("sensitivity_grid")
    layers = {name: layer for name, layer in (stats.get("layers") or {}).items() if layer.get("sensitivity")}
    if not grid or not layers:
        return None
    figure = go.Figure()
    for index, (name, layer) in enumerate(sorted(layers.items())):
        color = _COLORS[index % len(_COLORS)]
        curve = layer["sensitivity"]
        figure.add_trace(
            go.Scatter(
                x=grid,
                y=curve,
                mode="lines",
                name=short(name),
                legendgroup=name,
                line={"color": color},
                hovertemplate="sparsity %{x:.2f}: error %{y:.4f}<extra>" + short(name) + "</extra>",
            )
        )
        chosen = layer.get("sparsity")
        if chosen is not None:
            figure.add_trace(
                go.Scatter(
                    x=[chosen],
                    y=[_interpolate(grid, curve, chosen)],
                    mode="markers",
                    marker={"color": color, "size": 11, "symbol": "diamond", "line": {"width": 1, "color": "black"}},
                    legendgroup=name,
                    showlegend=False,
                    hovertemplate="chosen sparsity %{x:.3f}<extra>" + short(name) + "</extra>",
                )
            )
    figure.update_xaxes(title="sparsity of the layer alone")
    figure.update_yaxes(title="relative output error", rangemode="tozero")
    return _layout(figure, "Sensitivity per layer (diamonds: chosen sparsity)", height=440)


def channels_figure(stats: dict[str, Any]) -> go.Figure | None:
    """Channel widths before and after ``prune-channels``, one pair of bars per channel group."""
    channels = stats.get("channels") or {}
    if not channels:
        return None
    names = list(channels)
    labels = [short(name, 36) for name in names]
    figure = go.Figure(
        [
            go.Bar(x=labels, y=[channels[n]["before"] for n in names], name="before", marker_color=_COLORS[0]),
            go.Bar(x=labels, y=[channels[n]["after"] for n in names], name="after", marker_color=_COLORS[1]),
        ]
    )
    figure.update_yaxes(title="channels", rangemode="tozero")
    return _layout(figure, "Channel widths before and after", height=400).update_layout(barmode="group")


def quantize_figure(stats: dict[str, Any]) -> go.Figure | None:
    """Quantized layers per op type beside the layers left float, counted by reason."""
    nodes = stats.get("nodes") or {}
    skipped = stats.get("skipped") or {}
    if not nodes and not skipped:
        return None
    ops = Counter(str(node.get("op", "?")) for node in nodes.values())
    reasons = Counter(short(str(reason), 40) for reason in skipped.values())
    panels = [
        (title, counts)
        for title, counts in (("quantized, by op type", ops), ("left float, by reason", reasons))
        if counts
    ]
    figure = make_subplots(rows=1, cols=len(panels), subplot_titles=[title for title, _ in panels])
    for column, (title, counts) in enumerate(panels, 1):
        color = _COLORS[2] if title.startswith("quantized") else _COLORS[1]
        figure.add_trace(go.Bar(x=list(counts), y=list(counts.values()), marker_color=color, name=title), 1, column)
    return _layout(figure, "Quantization decisions", height=400).update_layout(showlegend=False)


def verification_figure(report: dict[str, Any]) -> go.Figure | None:
    """Error after each pass (``--verify-each``) or, without it, the final metrics per output."""
    each = report.get("verify_each") or []
    if each:
        steps = [f"{index}. {record.get('pass', '?')}" for index, record in enumerate(each, 1)]
        figure = make_subplots(rows=1, cols=2, subplot_titles=["min cosine similarity", "max relative error"])
        cosine = [record.get("min_cosine") for record in each]
        worst = [max((o.get("max_rel") or 0.0 for o in record.get("outputs", [])), default=None) for record in each]
        figure.add_trace(go.Scatter(x=steps, y=cosine, mode="lines+markers", name="cosine"), 1, 1)
        figure.add_trace(go.Scatter(x=steps, y=worst, mode="lines+markers", name="max rel"), 1, 2)
        return _layout(figure, "Numerics after each pass").update_layout(showlegend=False)
    outputs = (report.get("verification") or {}).get("outputs") or []
    if not outputs:
        return None
    names = [short(str(o.get("name")), 36) for o in outputs]
    figure = go.Figure([go.Bar(x=names, y=[o.get("cosine") for o in outputs], name="cosine")])
    if any(o.get("top1_agreement") is not None for o in outputs):
        figure.add_trace(go.Bar(x=names, y=[o.get("top1_agreement") for o in outputs], name="top-1 agreement"))
    figure.update_yaxes(range=[0, 1.05])
    return _layout(figure, "Output similarity to the input model").update_layout(barmode="group")
