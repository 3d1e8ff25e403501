"""The ``verify`` command: two models compared on the same inputs with onnxruntime."""

from __future__ import annotations

import json
from pathlib import Path

import click

from onnxshrink.cli.common import PROVIDER, guarded, main
from onnxshrink.errors import UsageError


@main.command("verify")
@click.argument("reference", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("candidate", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--inputs", type=click.Path(dir_okay=False, path_type=Path), help="Inputs .npz (optional 'labels').")
@click.option("--calib", metavar="DATA", help="Use calibration samples as inputs.")
@click.option("--shape", "shapes", multiple=True, metavar="NAME=DIMS", help="Size of dynamic input dims.")
@click.option("--provider", type=PROVIDER, default="auto", show_default=True)
@click.option("--rtol", type=float, default=None, help="Relative tolerance (times max|ref|). [default: 1e-4]")
@click.option("--atol", type=float, default=None, help="Absolute tolerance. [default: 1e-5]")
@click.option(
    "--min-cosine",
    type=float,
    default=None,
    help="Pass when every output's cosine is at least this (instead of the tolerance).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON.")
@guarded
def verify_command(
    reference: Path,
    candidate: Path,
    inputs: Path | None,
    calib: str | None,
    shapes: tuple[str, ...],
    provider: str,
    rtol: float | None,
    atol: float | None,
    min_cosine: float | None,
    as_json: bool,
) -> None:
    """Compare CANDIDATE's outputs with REFERENCE's on the same inputs; exit 1 when they differ."""
    from onnxshrink.data.model_inputs import parse_shapes
    from onnxshrink.data.readers import open_samples
    from onnxshrink.data.samples import verification_feed
    from onnxshrink.errors import VerificationError
    from onnxshrink.loading import load_model
    from onnxshrink.runtime import RuntimeUnavailable
    from onnxshrink.verify import DEFAULT_ATOL, DEFAULT_RTOL, Verifier

    ref = load_model(reference)
    cand = load_model(candidate)
    given = open_samples(inputs, role="inputs") if inputs is not None else None
    calibration = open_samples(calib) if calib else None
    feed = verification_feed(ref.model, given, calibration, parse_shapes(shapes))
    verifier = Verifier(
        ref.source, feed, provider, DEFAULT_RTOL if rtol is None else rtol, DEFAULT_ATOL if atol is None else atol
    )
    try:
        report = verifier.compare(cand.model)
    except RuntimeUnavailable as error:
        raise UsageError(f"onnxruntime cannot run these models: {error}") from None
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2, sort_keys=True, default=str))
    else:
        click.echo(f"provider {report.provider} ({report.provider_reason}); inputs: {report.inputs}")
        for o in report.outputs:
            top1 = f" top1 {o.top1_agreement:.4f}" if o.top1_agreement is not None else ""
            click.echo(
                f"  {o.name}: max abs {o.max_abs:.3g}  max rel {o.max_rel:.3g}  cosine {o.cosine:.6f}{top1}"
                f"  {'ok' if o.within_tolerance else 'DIFFERS'}{' (' + o.note + ')' if o.note else ''}"
            )
        if report.accuracy_reference is not None:
            click.echo(f"  accuracy {report.accuracy_reference:.4f} -> {report.accuracy_candidate:.4f}")
    ok = report.min_cosine >= min_cosine if min_cosine is not None else report.within_tolerance
    if not ok:
        raise VerificationError(
            "the models differ beyond tolerance"
            if min_cosine is None
            else f"cosine {report.min_cosine:.6f} < {min_cosine}"
        )
