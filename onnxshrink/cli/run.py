"""The ``run`` command: passes, verification and a model and report written together."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import click

from onnxshrink import progress
from onnxshrink.cli.common import PROVIDER, executor_options, guarded, human_bytes, main
from onnxshrink.errors import UsageError

DEFAULT_PIPELINE = "simplify"  # what 'run' does without -p (onnxsim simplifies by default)


def _save_with_progress(result: Any, output: Path, external_data: bool | None) -> None:
    """Saves; the external-data tensors being written are a progress task (shown on a terminal)."""
    with contextlib.ExitStack() as stack:
        steps: list[Any] = []

        def on_tensor(tensor: Any, info: Any) -> None:
            if not steps:  # the total is known only once the writer starts
                steps.append(stack.enter_context(progress.task("writing weights", total=info.total)))
            steps[0].advance()

        result.save(output, external_data=external_data, on_tensor=on_tensor)


@main.command()
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("output_arg", metavar="[OUTPUT]", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Where to write the result.")
@click.option(
    "-p",
    "--pass",
    "pass_specs",
    multiple=True,
    metavar="SPEC",
    help="NAME[:KEY=VALUE,...]; repeat in order. See 'onnxshrink passes'. [default: simplify]",
)
@click.option(
    "--recipe",
    type=click.Path(dir_okay=False, path_type=Path),
    help="TOML file with [[pass]] tables (run before -p passes).",
)
@click.option(
    "--calib", metavar="DATA", help="Calibration data: .npz, .npy, folder of .npz, or module:attribute reader."
)
@click.option(
    "--inputs",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Verification inputs (.npz keyed by input name, optional 'labels'; or .npy for one input).",
)
@click.option(
    "--shape",
    "shapes",
    multiple=True,
    metavar="NAME=DIMS",
    help="Size of dynamic input dims, e.g. input=1x3x224x224 or input:1,3,224,224.",
)
@click.option(
    "--fix-shape",
    "fix_shapes",
    multiple=True,
    metavar="NAME=DIMS",
    help="Write these concrete dims into the output model's input (like onnxsim's --overwrite-input-shape).",
)
@click.option("--provider", type=PROVIDER, default="auto", show_default=True, help="onnxruntime execution provider.")
@click.option("--verify/--no-verify", default=True, show_default=True, help="Compare the result with the input model.")
@click.option("--verify-each", is_flag=True, help="Full checks and a numeric comparison after every pass.")
@click.option(
    "--report",
    "report_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the report here: JSON, or HTML with plots for a .html path.",
)
@click.option(
    "--external-data/--no-external-data", default=None, help="Weights in OUT.data (default: only past 2 GiB)."
)
@click.option(
    "--rtol", type=float, default=None, help="Relative tolerance of exact pipelines (times max|ref|). [default: 1e-4]"
)
@click.option("--atol", type=float, default=None, help="Absolute tolerance of exact pipelines. [default: 1e-5]")
@click.option("-q", "--quiet", is_flag=True, help="Print only the first lines, not the per-pass and op-count tables.")
@click.option("--max-drop", type=float, default=None, help="Lossy budget: largest accuracy drop (needs labels).")
@click.option("--min-cosine", type=float, default=None, help="Lossy budget: smallest output cosine similarity.")
@executor_options(
    executor_help="Where passes measure in parallel (prune:allocation=sensitivity): this machine, or a Ray cluster.",
    workers_help="Worker processes (local; 1: in this process) or the most Ray workers.",
)
@guarded
def run(
    model: Path,
    output_arg: Path | None,
    output: Path | None,
    pass_specs: tuple[str, ...],
    recipe: Path | None,
    calib: str | None,
    inputs: Path | None,
    shapes: tuple[str, ...],
    fix_shapes: tuple[str, ...],
    provider: str,
    verify: bool,
    verify_each: bool,
    report_path: Path | None,
    external_data: bool | None,
    rtol: float | None,
    atol: float | None,
    quiet: bool,
    max_drop: float | None,
    min_cosine: float | None,
    executor: str,
    workers: int,
    ray_address: str,
    gpus_per_worker: float | None,
) -> None:
    """Run passes on MODEL and write the verified result to OUTPUT (or -o OUTPUT).

    Without -p or --recipe, runs the 'simplify' preset. Every path, option and data file is
    checked before any work starts; the model and the report are written together or not at all.
    """
    from onnxshrink import registry
    from onnxshrink.api import shrink
    from onnxshrink.cli.run_summary import RunMeasure, run_summary, unchanged_lossy_warnings
    from onnxshrink.data.model_inputs import parse_shapes
    from onnxshrink.saving import check_write_paths, same_file
    from onnxshrink.spec import load_recipe, parse_specs
    from onnxshrink.verify import DEFAULT_ATOL, DEFAULT_RTOL

    output = _output_path(output_arg, output)
    calib_file = Path(calib) if calib is not None and Path(calib).is_file() else None
    check_write_paths(model, output, report_path, {"--calib": calib_file, "--inputs": inputs, "--recipe": recipe})
    if report_path is not None:
        from onnxshrink.report import is_html, require_renderer

        if is_html(report_path):
            require_renderer()  # before any work: a missing plotly must not fail after the model is written
    if inputs is not None and not inputs.is_file():
        raise UsageError(f"inputs file not found: {inputs}")
    specs = (load_recipe(recipe) if recipe else []) + parse_specs(list(pass_specs))
    if not specs:
        steps = " -> ".join(registry.presets()[DEFAULT_PIPELINE].steps)
        click.echo(f"onnxshrink: no -p or --recipe given; running '{DEFAULT_PIPELINE}' ({steps})", err=True)
        specs = parse_specs([DEFAULT_PIPELINE])
    # It keeps the input's totals (taken before any pass, so before the output may replace the input).
    measure = None if quiet else RunMeasure(parse_shapes(shapes))
    result = shrink(
        model,
        specs,
        calibration=calib,
        inputs=inputs,
        provider=provider,
        verify=verify,
        verify_each=verify_each,
        shapes=parse_shapes(shapes),
        rtol=DEFAULT_RTOL if rtol is None else rtol,
        atol=DEFAULT_ATOL if atol is None else atol,
        max_drop=max_drop,
        min_cosine=min_cosine,
        fix_shapes=parse_shapes(fix_shapes, "--fix-shape"),
        measure=measure,
        executor=executor,
        workers=workers,
        ray_address=ray_address,
        gpus_per_worker=gpus_per_worker,
    )
    _save_together(result, output, report_path, external_data)
    report = result.report
    if same_file(output, model) and not report["exact"]:
        click.echo(f"onnxshrink: note: replaced the input model {model} with the lossy result", err=True)
    _echo_run_summary(output, report)
    for warning in unchanged_lossy_warnings(report):
        click.echo(f"onnxshrink: {warning}", err=True)
    if measure is not None and measure.input_totals is not None:
        after = measure.output_totals(result.model, report["passes"], remeasure=bool(fix_shapes))
        click.echo(run_summary(report, measure.input_totals, after))


def _output_path(positional: Path | None, option: Path | None) -> Path:
    """The one output path, given as OUTPUT or -o (both only when they agree)."""
    if positional is not None and option is not None and positional != option:
        raise UsageError(f"two outputs given: OUTPUT {positional} and -o {option}; give one")
    chosen = positional if positional is not None else option
    if chosen is None:
        raise UsageError("no output given; use 'onnxshrink run MODEL OUTPUT' or -o OUTPUT")
    return chosen


def _write_report(path: Path, report: dict[str, Any]) -> None:
    """Writes the run's report to ``path``: JSON, or an HTML page with plots when it ends in .html."""
    from onnxshrink.report import write_report

    write_report(path, report)


def _save_together(result: Any, output: Path, report_path: Path | None, external_data: bool | None) -> None:
    """Writes the model and the report together or not at all: report first to a temporary, then rename."""
    from onnxshrink.saving import written_after

    if report_path is None:
        _save_with_progress(result, output, external_data)
        return
    result.report["output"]["path"] = str(output)
    with written_after(report_path) as pending:
        _write_report(pending, result.report)
        _save_with_progress(result, output, external_data)


def _echo_run_summary(output: Path, report: dict[str, Any]) -> None:
    from onnxshrink.data.samples import GENERATED

    before, after = report["input"], report["output"]
    click.echo(
        f"{output}: {before['nodes']} -> {after['nodes']} nodes, "
        f"{human_bytes(before['bytes'])} -> {human_bytes(after['bytes'])} of weights"
    )
    verification = report["verification"]
    if verification is None:
        click.echo("not verified (--no-verify)")
    elif "skipped" in verification:
        click.echo(f"not verified: {verification['skipped']}")
    else:
        line = (
            f"verified on {verification['provider']} with {verification['inputs']}: "
            f"max rel error {max(o['max_rel'] for o in verification['outputs']):.2e}, "
            f"min cosine {verification['min_cosine']:.6f}"
        )
        if verification.get("accuracy_reference") is not None:
            line += f", accuracy {verification['accuracy_reference']:.4f} -> {verification['accuracy_candidate']:.4f}"
        click.echo(line)
        if verification["inputs"] == GENERATED:
            click.echo("note: verification used invented inputs; pass --inputs or --calib to check on real data")
