"""The ``inspect`` command: one model's summary, or two models side by side."""

from __future__ import annotations

import json
from pathlib import Path

import click

from onnxshrink.cli.common import PROVIDER, guarded, main
from onnxshrink.errors import UsageError

_LISTED_FINDINGS = 50  # lint findings printed as text; --json has all


@main.command("inspect")
@click.argument("models", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@click.option("--shape", "shapes", multiple=True, metavar="NAME=DIMS", help="Size of dynamic input dims for MACs.")
@click.option("--kernels", is_flag=True, help="Which compute nodes onnxruntime runs as integer kernels.")
@click.option(
    "--provider", type=PROVIDER, default=None, help="Execution provider --kernels optimizes for. [default: cpu]"
)
@click.option(
    "--lint",
    type=click.Choice(["tensorrt"]),
    default=None,
    help="Check Q/DQ nodes against a target's rules; exit 1 when a rule is broken.",
)
@guarded
def inspect_command(
    models: tuple[Path, ...],
    as_json: bool,
    shapes: tuple[str, ...],
    kernels: bool,
    provider: str | None,
    lint: str | None,
) -> None:
    """Nodes, op histogram, parameters, bytes (raw and compressed), sparsity, quantized share, MACs.

    MODELS is one model, or two (A B) to show side by side: totals, and per layer (matched by
    node name) shapes, precision, sparsity, MACs and bytes. --kernels: which compute nodes
    onnxruntime runs as integer kernels. --lint tensorrt: the TensorRT parser's Q/DQ rules; exit 1
    when one is broken.
    """
    from collections import Counter

    from onnxshrink.data.model_inputs import parse_shapes
    from onnxshrink.errors import VerificationError
    from onnxshrink.inspect.diff import diff_inspections, format_diff
    from onnxshrink.inspect.int_kernels import format_kernels, kernel_report
    from onnxshrink.inspect.layers import attach_kernels
    from onnxshrink.inspect.summary import format_inspection, inspect_model, value_shapes
    from onnxshrink.inspect.tensorrt_lint import LintFinding, lint_tensorrt
    from onnxshrink.loading import load_model

    if provider is not None and not kernels:
        raise UsageError("--provider applies to --kernels only; add --kernels")
    if len(models) > 2:
        raise UsageError(f"inspect takes one model, or two to compare; got {len(models)}")
    given = parse_shapes(shapes)
    if len(models) == 2:
        if kernels or lint:
            raise UsageError("--kernels and --lint apply to one model; inspect A and B separately")
        a, b = (inspect_model(load_model(path).model, given) for path in models)
        diff = diff_inspections(a, b)
        click.echo(
            json.dumps({"a": str(models[0]), "b": str(models[1]), **diff}, indent=2, sort_keys=True)
            if as_json
            else format_diff(diff, str(models[0]), str(models[1]))
        )
        return
    loaded = load_model(models[0]).model
    info = inspect_model(loaded, given)
    text: list[str] = []
    if kernels:
        report = kernel_report(loaded, provider or "cpu")
        info["kernels"] = report.to_json()
        attach_kernels(info["layers"], {node.node: node.kernel for node in report.nodes})
    text.append(format_inspection(info))
    if kernels:
        text.append(format_kernels(report))
    findings: list[LintFinding] = []
    if lint == "tensorrt":
        findings = lint_tensorrt(loaded, value_shapes(loaded, given))
        info["lint"] = {"target": lint, "passed": not findings, "findings": [vars(f) for f in findings]}
        checked = sum(info["ops"].get(op, 0) for op in ("QuantizeLinear", "DequantizeLinear"))
        by_rule = Counter(f.rule for f in findings)
        summary = ", ".join(f"{rule} {count}" for rule, count in by_rule.most_common())
        text.append(
            f"TensorRT lint: {len(findings)} findings in {checked} Q/DQ nodes" + (f" ({summary})" if summary else "")
        )
        text.extend(f"  {finding}" for finding in findings[:_LISTED_FINDINGS])
        if len(findings) > _LISTED_FINDINGS:
            text.append(f"  ... {len(findings) - _LISTED_FINDINGS} more (--json lists all)")
    click.echo(json.dumps(info, indent=2, sort_keys=True) if as_json else "\n".join(text))
    if findings:
        # Like a failed verification (exit 1): the model is valid ONNX, but a check asked for failed.
        raise VerificationError(f"TensorRT lint: {len(findings)} findings; first: {findings[0]}")
