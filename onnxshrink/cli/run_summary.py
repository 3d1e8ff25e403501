"""What ``onnxshrink run`` prints after its first lines: per-pass results, totals and op counts.

Three parts, all computed from the report and the two models:

1. One row per pass run: nodes, weight bytes raw and compressed and MACs after it (measured by
   :class:`RunMeasure` only after a pass that changed the model), what it did (weight sparsity,
   layers quantized and left float, channels removed) and, with ``--verify-each``, the error after it.
2. Input and output totals as ``inspect`` computes them: weight bytes raw and compressed, MACs,
   float weight sparsity and the quantized weight share. Reading weights (compression, sparsity)
   is bounded: a model holding more than :data:`READ_LIMIT` bytes of weights shows ``-`` there,
   so a 2 GB model pays for shape inference only, not minutes of compression.
3. Op counts before and after, like onnxsim's table: only the op types whose count changed,
   plus the total.

And :func:`unchanged_lossy_warnings`: one line per lossy pass that changed nothing, with why.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import onnx_ir as ir

from onnxshrink.errors import UsageError
from onnxshrink.inspect.macs import graph_macs
from onnxshrink.inspect.summary import (
    compressed_weight_bytes,
    compression_method,
    float_weight_sparsity,
    op_counts,
    quantized_weight_share,
    value_shapes,
)
from onnxshrink.ir.graphs import count_bytes

READ_LIMIT = 256 * 1024 * 1024  # weight bytes above which compression and sparsity are not computed
_REASONS_SHOWN = 3


def model_totals(
    model: ir.Model,
    shapes: Mapping[str, tuple[int, ...]],
    read_limit: int = READ_LIMIT,
    measured: Mapping[str, int | None] | None = None,
) -> dict[str, Any]:
    """Op counts, weight bytes, MACs and, within ``read_limit`` weight bytes, compressed size and sparsity.

    Args:
        model: The model to count.
        shapes: Sizes of dynamic input dims for MACs (``--shape``).
        read_limit: Weight bytes above which compression and sparsity are not computed.
        measured: Figures already measured on this very model by :class:`RunMeasure` (``macs``,
            ``bytes_compressed``; a record's ``..._before`` or ``..._after``): taken as they are
            rather than measured again, which on BERT-base saves a shape inference with folding
            (seconds) per model.
    """
    raw = count_bytes(model)
    within = raw <= read_limit
    measured = measured or {}
    # None: shapes could not be inferred; 0 then, as inspect counts
    macs = (measured["macs"] if "macs" in measured else _macs(model, shapes)) or 0
    if "bytes_compressed" in measured:
        compressed = measured["bytes_compressed"]
    else:
        compressed = compressed_weight_bytes(model)[1] if within else None
    ops = op_counts(model)
    return {
        "nodes": sum(ops.values()),
        "ops": dict(ops),
        "bytes": raw,
        "bytes_compressed": compressed,
        "compression": compression_method() if within else None,
        "macs": macs,
        "float_weight_sparsity": float_weight_sparsity(model) if within else None,
        "quantized_weight_share": quantized_weight_share(model) if within else None,
    }


def _macs(model: ir.Model, shapes: Mapping[str, tuple[int, ...]]) -> int | None:
    """MACs as ``inspect`` counts them; None for a model whose shapes cannot be inferred.

    Raises:
        UsageError: ``shapes`` names an input the model does not have, or gives it the wrong rank.
    """
    try:
        return graph_macs(model.graph, value_shapes(model, shapes)).macs
    except UsageError:
        raise
    except Exception:  # serialization of exotic models; MACs are then unknown, as in inspect
        return None


class RunMeasure:
    """What ``onnxshrink run`` measures: the pipeline's per-pass figures, and the input's and output's totals.

    Called by the pipeline (as its ``measure``) on the input and after each pass that changed the
    model, it returns MACs and compressed weight bytes, counted as ``inspect`` counts them;
    compression is skipped (None) past ``read_limit`` weight bytes, and MACs are None for a model
    whose shapes cannot be inferred. Its first call, on the input before any pass, also keeps the
    input's totals (:func:`model_totals`), and :meth:`output_totals` takes the output's MACs and
    compressed bytes from the last pass record: each model is measured once (on BERT-base a
    measure costs a shape inference with folding, seconds).

    Raises:
        UsageError: A ``shapes`` entry does not fit the model (raised on the input, before any pass).
    """

    def __init__(self, shapes: Mapping[str, tuple[int, ...]], read_limit: int = READ_LIMIT) -> None:
        self.shapes = dict(shapes)
        self.read_limit = read_limit
        self.input_totals: dict[str, Any] | None = None

    def __call__(self, model: ir.Model) -> dict[str, int | None]:
        """The model's ``macs`` and ``bytes_compressed``; on the first call, also keeps its totals."""
        compressed = compressed_weight_bytes(model)[1] if count_bytes(model) <= self.read_limit else None
        figures = {"macs": _macs(model, self.shapes), "bytes_compressed": compressed}
        if self.input_totals is None:
            self.input_totals = model_totals(model, self.shapes, self.read_limit, measured=figures)
        return figures

    def output_totals(
        self, model: ir.Model, records: Sequence[Mapping[str, Any]], *, remeasure: bool
    ) -> dict[str, Any]:
        """The output's totals, its MACs and compressed bytes from the last record (``remeasure``: counted again).

        Args:
            model: The pipeline's result.
            records: The report's pass records (JSON, with this measure's ``macs_after`` etc.).
            remeasure: Count MACs and bytes again, for a model changed after its last pass
                (``--fix-shape`` writes sizes into the inputs, which changes the MACs).
        """
        measured = None
        if not remeasure and records and "macs_after" in records[-1]:
            last = records[-1]
            measured = {"macs": last["macs_after"], "bytes_compressed": last["bytes_compressed_after"]}
        return model_totals(model, self.shapes, self.read_limit, measured=measured)


def _count(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _did(stats: Mapping[str, Any]) -> tuple[str, str, str, str]:
    """Sparsity, layers quantized, layers left float, channels removed: what a pass's stats say."""
    sparsity = _percent(stats["sparsity"]) if isinstance(stats.get("sparsity"), float) else "-"
    quantized = str(stats["quantized_nodes"]) if "quantized_nodes" in stats else "-"
    left_float = str(len(stats.get("skipped", {}))) if "quantized_nodes" in stats else "-"
    channels = str(stats["channels_removed"]) if "channels_removed" in stats else "-"
    return sparsity, quantized, left_float, channels


def _error(each: Mapping[str, Any] | None) -> tuple[str, str]:
    if each is None:
        return "-", "-"
    if "skipped" in each:
        return "skipped", "-"
    return f"{max(o['max_rel'] for o in each['outputs']):.2e}", f"{each['min_cosine']:.6f}"


def pass_table(report: Mapping[str, Any], before: Mapping[str, Any] | None = None) -> list[str]:
    """One row per pass run (and the input first); the error columns only with ``--verify-each``.

    Compressed bytes and MACs come from each record's ``bytes_compressed_after``/``macs_after``
    (``-`` when not measured); the input's from ``before`` (:func:`model_totals`).
    """
    each = report.get("verify_each")
    errors = iter(each or [])
    method = (before or {}).get("compression") or "zstd"
    header = ["pass", "nodes", "weight bytes", f"{method} bytes", "MACs", "sparsity", "quantized", "left float"]
    header.append("channels removed")
    if each is not None:
        header += ["max rel err", "min cosine"]
    given = before or {}
    rows = [
        [
            "input",
            str(report["input"]["nodes"]),
            f"{report['input']['bytes']:,}",
            _count(given.get("bytes_compressed")),
            _count(given.get("macs")),
        ]
    ]
    for record in report["passes"]:
        row = [
            record["name"] + ("" if record["modified"] else " (no change)"),
            str(record["nodes_after"]),
            f"{record['bytes_after']:,}",
            _count(record.get("bytes_compressed_after")),
            _count(record.get("macs_after")),
            *_did(record["stats"]),
        ]
        if each is not None:
            # verify-each compares only after the passes that modified the model, in order
            row.extend(_error(next(errors, None) if record["modified"] else None))
        rows.append(row)
    rows = [row + [""] * (len(header) - len(row)) for row in rows]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["passes:"]
    for row in [header, *rows]:
        cells = [f"{row[0]:{widths[0]}}", *(f"{cell:>{w}}" for cell, w in zip(row[1:], widths[1:], strict=True))]
        lines.append("  " + "  ".join(cells).rstrip())
    return lines


def totals_table(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[str]:
    """Input and output totals: weight bytes raw and compressed, MACs, sparsity, quantized share."""
    method = after["compression"] or before["compression"] or "compressed"

    def size(info: Mapping[str, Any]) -> str:
        return "-" if info["bytes_compressed"] is None else f"{info['bytes_compressed']:,}"

    rows = [
        ("weight bytes", f"{before['bytes']:,}", f"{after['bytes']:,}"),
        (f"weight bytes ({method})", size(before), size(after)),
        ("MACs", f"{before['macs']:,}", f"{after['macs']:,}"),
        ("float weight sparsity", _percent(before["float_weight_sparsity"]), _percent(after["float_weight_sparsity"])),
        (
            "quantized weight share",
            _percent(before["quantized_weight_share"]),
            _percent(after["quantized_weight_share"]),
        ),
    ]
    lines = [f"  {'':24} {'input':>14} {'output':>14}"]
    lines.extend(f"  {name:24} {x:>14} {y:>14}" for name, x, y in rows)
    if before["bytes_compressed"] is None or after["bytes_compressed"] is None:
        lines.append(f"  (compression and sparsity not computed past {READ_LIMIT // 2**20} MiB of weights)")
    return lines


def op_table(before: Mapping[str, int], after: Mapping[str, int]) -> list[str]:
    """onnxsim-style op counts: the op types whose count changed, then the total."""
    changed = sorted(op for op in {*before, *after} if before.get(op, 0) != after.get(op, 0))
    width = max([len("op"), len("total"), *(len(op) for op in changed)])
    lines = [f"  {'op':{width}} {'before':>8} {'after':>8}"]
    lines.extend(f"  {op:{width}} {before.get(op, 0):>8} {after.get(op, 0):>8}" for op in changed)
    lines.append(f"  {'total':{width}} {sum(before.values()):>8} {sum(after.values()):>8}")
    return lines


def unchanged_lossy_warnings(report: Mapping[str, Any]) -> list[str]:
    """One warning per lossy pass that changed nothing, with up to three reasons from its skipped list."""
    warnings = []
    # A preset repeats its passes to a fixed point: a later round changing nothing is expected.
    changed = {(r["name"], r["preset"]) for r in report["passes"] if r["modified"]}
    for record in report["passes"]:
        if record["exact"] or (record["name"], record["preset"]) in changed:
            continue
        skipped: Mapping[str, str] = record["stats"].get("skipped", {})
        reasons = Counter(skipped.values())
        why = "; ".join(
            f"{reason} ({count} layers)"
            if count > 1
            else f"{next(k for k, v in skipped.items() if v == reason)}: {reason}"
            for reason, count in reasons.most_common(_REASONS_SHOWN)
        )
        more = len(reasons) - _REASONS_SHOWN
        why += f"; and {more} more reasons (see --report)" if more > 0 else ""
        warnings.append(f"warning: lossy pass '{record['name']}' changed nothing: {why or 'no reason reported'}")
    return warnings


def run_summary(report: Mapping[str, Any], before: Mapping[str, Any], after: Mapping[str, Any]) -> str:
    """The per-pass table, the totals and the op counts (``before``/``after`` from :func:`model_totals`)."""
    lines = [
        *pass_table(report, before),
        "totals:",
        *totals_table(before, after),
        "op counts (changed only):",
        *op_table(before["ops"], after["ops"]),
    ]
    return "\n".join(lines)
