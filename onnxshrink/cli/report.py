"""The ``report`` command: a JSON report rendered as one offline HTML page."""

from __future__ import annotations

from pathlib import Path

import click

from onnxshrink.cli.common import guarded, main
from onnxshrink.errors import UsageError


@main.command("report")
@click.argument("report_file", metavar="REPORT.json", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The HTML page to write (one self-contained file; opens offline).",
)
@guarded
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
