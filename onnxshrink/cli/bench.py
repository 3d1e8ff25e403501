"""The ``bench`` command: onnxruntime latency of one model."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import click

from onnxshrink.cli.common import PROVIDER, guarded, main


@main.command("bench")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--provider", type=PROVIDER, default="auto", show_default=True)
@click.option("--shape", "shapes", multiple=True, metavar="NAME=DIMS", help="Size of dynamic input dims.")
@click.option("--batch", type=click.IntRange(min=1), default=None, help="Batch size for a dynamic first axis.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="onnxruntime intra-op threads.")
@click.option("--runs", type=click.IntRange(min=1), default=50, show_default=True, help="Timed runs.")
@click.option("--warmup", type=click.IntRange(min=0), default=5, show_default=True, help="Untimed runs first.")
@click.option("--json", "as_json", is_flag=True)
@guarded
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
    from onnxshrink import progress
    from onnxshrink.data.model_inputs import parse_shapes
    from onnxshrink.latency import measure_latency

    with progress.use(progress.SILENT) if as_json else contextlib.nullcontext():
        result = measure_latency(
            model,
            provider=provider,
            shapes=parse_shapes(shapes),
            batch=batch,
            threads=threads,
            runs=runs,
            warmup=warmup,
        )
    if as_json:
        click.echo(json.dumps(result, indent=2, sort_keys=True))
    else:
        click.echo(
            f"{model}: median {result['median_ms']:.3f} ms (p10 {result['p10_ms']:.3f}, p90 {result['p90_ms']:.3f}) "
            f"over {result['runs']} runs on {result['provider']}"
        )
