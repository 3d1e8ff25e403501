"""The ``onnxshrink`` command line, derived from the pass registry.

Heavy imports (onnx, onnxruntime, numpy) happen inside commands so ``--help`` stays fast.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from onnxshrink._version import __version__
from onnxshrink.errors import ShrinkError, UsageError

F = TypeVar("F", bound=Callable[..., Any])

_PROVIDER = click.Choice(["auto", "cpu", "cuda"])
_LISTED_FINDINGS = 50  # lint findings printed as text; --json has all
DEFAULT_PIPELINE = "simplify"  # what 'run' does without -p (onnxsim simplifies by default)


class _State:
    debug = False


def _configure_logging(verbose: int, debug: bool) -> None:
    level = logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    # onnx-ir logs recoverable oddities of input models as warnings; we report our own.
    logging.getLogger("onnx_ir").setLevel(logging.DEBUG if debug else logging.ERROR)


def _fail(error: BaseException, code: int) -> None:
    if _State.debug:
        traceback.print_exception(error)
    message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    click.echo(f"onnxshrink: error: {message}", err=True)
    sys.exit(code)


def _quiet_broken_pipe() -> None:
    """The reader of our stdout left (``onnxshrink passes | head -1``): stop quietly.

    Python's documented recipe: point stdout at devnull so the flush at exit cannot fail again.
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    sys.exit(1)


def _guarded(func: F) -> F:
    """Turns onnxshrink errors into one stderr line and the documented exit code."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ShrinkError as error:
            _fail(error, error.exit_code)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except BrokenPipeError:
            _quiet_broken_pipe()
        except KeyboardInterrupt:
            _fail(RuntimeError("interrupted; nothing written"), 130)
        except Exception as error:  # an onnxshrink bug: still one line, traceback with --debug
            _fail(RuntimeError(f"internal error: {type(error).__name__}: {error} (rerun with --debug)"), 1)

    wrapper.__name__ = func.__name__
    wrapper.__doc__ = func.__doc__
    return wrapper  # type: ignore[return-value]


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="onnxshrink")
@click.option("-v", "--verbose", count=True, help="Log what each step does.")
@click.option("--debug", is_flag=True, help="Debug logs and full tracebacks.")
def main(verbose: int, debug: bool) -> None:
    """onnxshrink: make ONNX models smaller and faster, numerics checked with onnxruntime."""
    _State.debug = debug
    _configure_logging(verbose, debug)


def _human_bytes(count: int) -> str:
    size = float(count)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{count} B"


def _save_with_progress(result: Any, output: Path, external_data: bool | None) -> None:
    """Saves; on a terminal, a progress bar follows the external-data tensors being written."""
    if not sys.stderr.isatty():
        result.save(output, external_data=external_data)
        return
    bars: list[Any] = []

    def on_tensor(tensor: Any, info: Any) -> None:
        if not bars:
            bars.append(click.progressbar(length=info.total, label="writing weights", file=sys.stderr))
            bars[0].__enter__()
        bars[0].update(1)

    try:
        result.save(output, external_data=external_data, on_tensor=on_tensor)
    finally:
        if bars:
            bars[0].__exit__(None, None, None)


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
@click.option("--provider", type=_PROVIDER, default="auto", show_default=True, help="onnxruntime execution provider.")
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
@click.option("--max-drop", type=float, default=None, help="Lossy budget: largest accuracy drop (needs labels).")
@click.option("--min-cosine", type=float, default=None, help="Lossy budget: smallest output cosine similarity.")
@_guarded
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
    max_drop: float | None,
    min_cosine: float | None,
) -> None:
    """Run passes on MODEL and write the verified result to OUTPUT (or -o OUTPUT).

    Without -p or --recipe, runs the 'simplify' preset. Every path, option and data file is
    checked before any work starts; the model and the report are written together or not at all.
    """
    from onnxshrink import registry
    from onnxshrink.api import shrink
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
    )
    _save_together(result, output, report_path, external_data)
    report = result.report
    if same_file(output, model) and not report["exact"]:
        click.echo(f"onnxshrink: note: replaced the input model {model} with the lossy result", err=True)
    _echo_run_summary(output, report)


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
        f"{_human_bytes(before['bytes'])} -> {_human_bytes(after['bytes'])} of weights"
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


@main.command("report")
@click.argument("report_file", metavar="REPORT.json", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The HTML page to write (one self-contained file; opens offline).",
)
@_guarded
def report_command(report_file: Path, output: Path) -> None:
    """Render a JSON report of 'run --report' as an HTML page with plots."""
    from onnxshrink.report import is_html, load_report, require_renderer, write_html

    if not is_html(output):
        raise UsageError(f"--output {output}: the page is HTML; name it *.html")
    if output.resolve() == report_file.resolve():
        raise UsageError(f"--output {output} is the report being read; choose another path")
    if not output.parent.is_dir():
        raise UsageError(f"--output {output}: folder {output.parent} does not exist")
    require_renderer()
    write_html(output, load_report(report_file))
    click.echo(f"{output}: HTML report written")


@main.command("passes")
@click.argument("name", required=False)
@_guarded
def list_passes(name: str | None) -> None:
    """List every pass and preset, or show one with its options, defaults and rules."""
    import inspect as _inspect

    from onnxshrink import registry

    if name is None:
        for pass_name, cls in registry.passes().items():
            kind = "exact" if cls.exact else "lossy"
            click.echo(f"{pass_name:16} {kind:6} {registry.summary(cls)}")
        for named in registry.presets().values():
            click.echo(f"{named.name:16} preset {named.doc} ({' -> '.join(named.steps)})")
        return
    preset = registry.presets().get(name)
    if preset is not None:
        rounds = f", repeated to a fixed point (at most {preset.max_steps} rounds)" if preset.fixed_point else ""
        click.echo(f"{name} (preset): {preset.doc}\nruns: {' -> '.join(preset.steps)}{rounds}")
        return
    cls = registry.get_pass(name)
    click.echo(f"{name} ({'exact' if cls.exact else 'lossy'})\n")
    click.echo(_inspect.cleandoc(cls.__doc__ or ""))
    options = registry.options_of(cls)
    click.echo("\nOptions:" if options else "\nOptions: none")
    for info in options:
        default = ",".join(map(str, info.default)) if isinstance(info.default, tuple) else info.default
        click.echo(f"  {info.key}={info.type_name}  (default: {default})  {info.help}")


@main.command("inspect")
@click.argument("models", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@click.option("--shape", "shapes", multiple=True, metavar="NAME=DIMS", help="Size of dynamic input dims for MACs.")
@click.option("--kernels", is_flag=True, help="Which compute nodes onnxruntime runs as integer kernels.")
@click.option(
    "--provider", type=_PROVIDER, default=None, help="Execution provider --kernels optimizes for. [default: cpu]"
)
@click.option(
    "--lint",
    type=click.Choice(["tensorrt"]),
    default=None,
    help="Check Q/DQ nodes against a target's rules; exit 1 when a rule is broken.",
)
@_guarded
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


@main.command("verify")
@click.argument("reference", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("candidate", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--inputs", type=click.Path(dir_okay=False, path_type=Path), help="Inputs .npz (optional 'labels').")
@click.option("--calib", metavar="DATA", help="Use calibration samples as inputs.")
@click.option("--shape", "shapes", multiple=True, metavar="NAME=DIMS", help="Size of dynamic input dims.")
@click.option("--provider", type=_PROVIDER, default="auto", show_default=True)
@click.option("--rtol", type=float, default=None, help="Relative tolerance (times max|ref|). [default: 1e-4]")
@click.option("--atol", type=float, default=None, help="Absolute tolerance. [default: 1e-5]")
@click.option(
    "--min-cosine",
    type=float,
    default=None,
    help="Pass when every output's cosine is at least this (instead of the tolerance).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON.")
@_guarded
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


@main.command("bench")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--provider", type=_PROVIDER, default="auto", show_default=True)
@click.option("--shape", "shapes", multiple=True, metavar="NAME=DIMS", help="Size of dynamic input dims.")
@click.option("--batch", type=click.IntRange(min=1), default=None, help="Batch size for a dynamic first axis.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="onnxruntime intra-op threads.")
@click.option("--runs", type=click.IntRange(min=1), default=50, show_default=True, help="Timed runs.")
@click.option("--warmup", type=click.IntRange(min=0), default=5, show_default=True, help="Untimed runs first.")
@click.option("--json", "as_json", is_flag=True)
@_guarded
def bench_command(
    model: Path,
    provider: str,
    shapes: tuple[str, ...],
    batch: int | None,
    threads: int | None,
    runs: int,
    warmup: int,
    as_json: bool,
) -> None:
    """Measure onnxruntime latency: warm-up, then the median of timed runs."""
    from onnxshrink.data.model_inputs import parse_shapes
    from onnxshrink.latency import measure_latency

    result = measure_latency(
        model,
        provider=provider,
        shapes=parse_shapes(shapes),
        batch=batch,
        threads=threads,
        runs=runs,
        warmup=warmup,
        progress=sys.stderr.isatty() and not as_json,
    )
    if as_json:
        click.echo(json.dumps(result, indent=2, sort_keys=True))
    else:
        click.echo(
            f"{model}: median {result['median_ms']:.3f} ms (p10 {result['p10_ms']:.3f}, p90 {result['p90_ms']:.3f}) "
            f"over {result['runs']} runs on {result['provider']}"
        )


def _trial_line(status: dict[str, Any]) -> str:
    """One progress line per finished trial: the trial, the best so far and what is left."""
    record = status["trial"]
    if record.get("error"):
        outcome = f"failed: {record['error']}"
    else:
        outcome = f"{_human_bytes(record['size'])}, MACs x{record['macs_ratio']:.2f}"
        if record.get("speedup") is not None:
            outcome += f", speedup {record['speedup']:.2f}x"
        outcome += f", loss {record['loss']:.4g}" + (" (misses a constraint)" if record["misses"] else "")
    cached = " (from the journal)" if record.get("resumed") else ""
    line = f"trial {record['number'] + 1}/{status['max_trials']}{cached}: {outcome} [{record['seconds']:.1f} s]"
    best = status["best"]
    if best is not None:
        kind = "best" if status["feasible"] else "nearest"
        line += f"; {kind} so far: trial {best['number'] + 1}, {_human_bytes(best['size'])}, loss {best['loss']:.4g}"
    if status["seconds_left"] is not None:
        line += f"; {max(status['seconds_left'], 0):.0f} s left"
    return line


@main.command("auto")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Where to write the model."
)
@click.option("--calib", metavar="DATA", required=True, help="Calibration data: .npz, folder, or module:attribute.")
@click.option(
    "--eval", "evaluation", metavar="DATA", required=True, help="Evaluation data .npz ('labels' for --max-drop)."
)
@click.option("--max-size", metavar="SIZE", help="Target: bytes of the saved model, e.g. 4MB, 300KB.")
@click.option("--max-macs", type=float, help="Target: MACs as a ratio of the input model's, e.g. 0.5.")
@click.option("--min-speedup", type=float, help="Target: latency speedup on --provider at --batch, e.g. 2.")
@click.option("--max-drop", type=float, help="Budget: accuracy drop in points (or of --metric's score).")
@click.option("--min-agreement", type=float, help="Budget: top-1 agreement with the input model.")
@click.option("--min-cosine", type=float, help="Budget: output cosine similarity with the input model.")
@click.option("--metric", metavar="MODULE:FUNC", help="Your score: f(model_path, samples) -> score (higher is better).")
@click.option("--time-budget", metavar="T", help="No new trial after this long, e.g. 30m, 90s.")
@click.option(
    "--study", type=click.Path(file_okay=False, path_type=Path), help="Study folder: profiles, trial journal."
)
@click.option("--resume", is_flag=True, help="Continue the study's journal; finished trials are not run again.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True, help="Trials built at a time.")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the global-knob search.")
@click.option("--search", "knobs", metavar="KNOBS", help="Knobs to search: channels,int8,int4 (default: all).")
@click.option("--trials", type=click.IntRange(min=1), default=12, show_default=True, help="Most candidates built.")
@click.option("--trial-timeout", metavar="T", default="10m", show_default=True, help="Time limit of one trial.")
@click.option("--trial-memory", metavar="SIZE", help="Address-space limit of one trial. [default: physical memory]")
@click.option("--provider", type=_PROVIDER, default="cpu", show_default=True, help="Where latency is measured.")
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True, help="Batch of --min-speedup.")
@click.option(
    "--report",
    "report_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the report here: FILE.json, or FILE.html (a page with the front plotted).",
)
@_guarded
def auto_command(
    model: Path,
    output: Path,
    calib: str,
    evaluation: str,
    max_size: str | None,
    max_macs: float | None,
    min_speedup: float | None,
    max_drop: float | None,
    min_agreement: float | None,
    min_cosine: float | None,
    metric: str | None,
    time_budget: str | None,
    study: Path | None,
    resume: bool,
    workers: int,
    executor: str,
    seed: int,
    knobs: str | None,
    trials: int,
    trial_timeout: str,
    trial_memory: str | None,
    provider: str,
    batch: int,
    report_path: Path | None,
) -> None:
    """Search for the best model that meets a target within an accuracy budget.

    Targets: --max-size, --max-macs, --min-speedup; budget: --max-drop, --min-agreement or
    --min-cosine (--metric with --max-drop). Writes OUTPUT, its recipe OUTPUT.toml (rebuild with
    'onnxshrink run MODEL --recipe OUTPUT.toml --calib DATA -o X') and, with --report, the report
    (.json or .html). Exit 1 when no candidate met everything: the nearest one is written and
    stderr says what it misses. On a terminal, each trial prints a line with the best model so far
    and the time left.
    """
    import optuna

    from onnxshrink.autotune import auto
    from onnxshrink.autotune.goal import parse_duration, parse_size
    from onnxshrink.errors import VerificationError

    if not _State.debug:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
    if report_path is not None and report_path.suffix.lower() not in (".json", ".html"):
        raise UsageError(f"--report {report_path}: name a .json or an .html file")
    if resume and study is None:
        raise UsageError("--resume needs --study DIR (the folder of the study to continue)")
    logger = logging.getLogger("onnxshrink.autotune")
    tty = sys.stderr.isatty()

    def progress(status: dict[str, Any]) -> None:
        if tty:
            click.echo(_trial_line(status), err=True)
        else:
            logger.info("%s", _trial_line(status))

    result = auto(
        model,
        calibration=calib,
        evaluation=evaluation,
        max_size=parse_size(max_size) if max_size is not None else None,
        max_macs=max_macs,
        min_speedup=min_speedup,
        max_drop=max_drop,
        min_agreement=min_agreement,
        min_cosine=min_cosine,
        metric=metric,
        time_budget=time_budget,
        study=study,
        resume=resume,
        workers=workers,
        executor=executor,
        seed=seed,
        provider=provider,
        batch=batch,
        search=knobs,
        max_trials=trials,
        trial_timeout=parse_duration(trial_timeout),
        trial_memory=parse_size(trial_memory) if trial_memory is not None else None,
        progress=progress,
    )
    result.save(output)
    recipe_path = output.with_suffix(".toml")
    recipe_path.write_text(result.recipe, encoding="utf-8")
    result.report["recipe"] = str(recipe_path)
    if report_path is not None:
        from onnxshrink.report.files import write_text_atomic

        if report_path.suffix.lower() == ".html":
            from onnxshrink.autotune.report import to_html

            write_text_atomic(report_path, to_html(result.report))
        else:
            write_text_atomic(report_path, json.dumps(result.report, indent=2, sort_keys=True) + "\n")
    chosen = result.report["trials"][result.report["chosen"]["trial"]]
    before = result.report["input"]["size"]
    click.echo(
        f"{output}: {_human_bytes(before)} -> {_human_bytes(chosen['size'])} ({before / chosen['size']:.2f}x smaller), "
        f"MACs x{chosen['macs_ratio']:.3f}, loss {chosen['loss']:.4g}; "
        f"{len(result.trials)} trials in {result.report['seconds']['total']:.0f} s; recipe {recipe_path}"
    )
    if not result.feasible:
        misses = "; ".join(result.misses.values())
        raise VerificationError(f"no candidate met the target within the budget; wrote the nearest: {misses}")


if __name__ == "__main__":  # pragma: no cover
    main()
