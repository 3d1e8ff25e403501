"""The ``auto`` command: a size, MACs or speed target within an accuracy budget."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import click

from onnxshrink.cli.common import PROVIDER, State, executor_options, guarded, human_bytes, main
from onnxshrink.errors import UsageError


def _trial_line(status: dict[str, Any]) -> str:
    """One progress line per finished trial: the trial, the best so far and what is left."""
    record = status["trial"]
    if record.get("error"):
        outcome = f"failed: {record['error']}"
    else:
        outcome = f"{human_bytes(record['size'])}, MACs x{record['macs_ratio']:.2f}"
        if record.get("speedup") is not None:
            outcome += f", speedup {record['speedup']:.2f}x"
        outcome += f", loss {record['loss']:.4g}" + (" (misses a constraint)" if record["misses"] else "")
    cached = " (from the journal)" if record.get("resumed") else ""
    line = f"trial {record['number'] + 1}/{status['max_trials']}{cached}: {outcome} [{record['seconds']:.1f} s]"
    best = status["best"]
    if best is not None:
        kind = "best" if status["feasible"] else "nearest"
        line += f"; {kind} so far: trial {best['number'] + 1}, {human_bytes(best['size'])}, loss {best['loss']:.4g}"
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
@click.option(
    "--metric",
    metavar="MODULE:FUNC",
    help="Your score (higher is better): f(model_path, samples), or f(session_factory, samples) when its first"
    " parameter is named session_factory.",
)
@click.option("--time-budget", metavar="T", help="No new trial after this long, e.g. 30m, 90s.")
@click.option(
    "--study", type=click.Path(file_okay=False, path_type=Path), help="Study folder: profiles, trial journal."
)
@click.option("--resume", is_flag=True, help="Continue the study's journal; finished trials are not run again.")
@executor_options(
    executor_help="Where profiling and trials run: this machine, or a Ray cluster (pip install 'onnxshrink[ray]').",
    workers_help="Trials built and profile items measured at a time (processes, or Ray workers).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the global-knob search.")
@click.option("--search", "knobs", metavar="KNOBS", help="Knobs to search: channels,int8,int4 (default: all).")
@click.option("--trials", type=click.IntRange(min=1), default=12, show_default=True, help="Most candidates built.")
@click.option("--trial-timeout", metavar="T", default="10m", show_default=True, help="Time limit of one trial.")
@click.option("--trial-memory", metavar="SIZE", help="Address-space limit of one trial. [default: physical memory]")
@click.option("--provider", type=PROVIDER, default="cpu", show_default=True, help="Where latency is measured.")
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True, help="Batch of --min-speedup.")
@click.option(
    "--report",
    "report_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the report here: FILE.json, or FILE.html (a page with the front plotted).",
)
@guarded
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
    ray_address: str,
    gpus_per_worker: float | None,
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
    from onnxshrink.autotune.goal import BUDGETS, parse_duration, parse_size
    from onnxshrink.errors import VerificationError

    if not State.debug:
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
        max_size=max_size,
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
        ray_address=ray_address,
        gpus_per_worker=gpus_per_worker,
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
        f"{output}: {human_bytes(before)} -> {human_bytes(chosen['size'])} ({before / chosen['size']:.2f}x smaller), "
        f"MACs x{chosen['macs_ratio']:.3f}, loss {chosen['loss']:.4g}; "
        f"{len(result.trials)} trials in {result.report['seconds']['total']:.0f} s; recipe {recipe_path}"
    )
    if not result.feasible:
        misses = "; ".join(result.misses.values())
        if set(result.misses) & set(BUDGETS):
            which = "no candidate stayed within the accuracy budget; wrote the one that goes least past it"
        else:
            which = "no candidate within the accuracy budget met the target; wrote the nearest to it"
        raise VerificationError(f"{which} (trial {chosen['number'] + 1}): {misses}")


if __name__ == "__main__":  # pragma: no cover
    main()
