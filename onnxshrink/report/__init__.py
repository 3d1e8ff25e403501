"""Report files: the JSON report as written, and the same report rendered as an HTML page with plots.

Rendering needs plotly (the ``report`` extra: ``pip install 'onnxshrink[report]'``); it is imported
only when an HTML page is written, so the rest of onnxshrink never loads it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from onnxshrink.errors import UsageError
from onnxshrink.report.files import write_text_atomic

__all__ = ["is_html", "load_report", "require_renderer", "write_html", "write_report"]

_INSTALL_HINT = "install it with: pip install 'onnxshrink[report]'"


def is_html(path: Path) -> bool:
    """Whether ``path`` asks for the HTML rendering (by its suffix) rather than JSON."""
    return Path(path).suffix.lower() in (".html", ".htm")


def require_renderer() -> None:
    """Fails with one clear line when plotly, which draws the HTML report, is not installed.

    Raises:
        UsageError: plotly cannot be imported.
    """
    try:
        import plotly  # noqa: F401
    except ImportError as error:
        raise UsageError(f"an HTML report needs plotly, which is not installed; {_INSTALL_HINT}") from error


def load_report(path: Path) -> dict[str, Any]:
    """Reads a JSON report that ``onnxshrink run --report`` wrote.

    Args:
        path: The ``.json`` file.

    Returns:
        The report.

    Raises:
        UsageError: The file is missing, is not JSON, or is not an onnxshrink report.
    """
    path = Path(path)
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise UsageError(f"report not found: {path}") from error
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UsageError(f"{path}: not a JSON report: {error}") from error
    if not isinstance(report, dict) or "passes" not in report:
        raise UsageError(f"{path}: not an onnxshrink report (no 'passes'); write one with 'onnxshrink run --report'")
    return report


def write_html(path: Path, report: dict[str, Any]) -> None:
    """Renders ``report`` and writes it to ``path`` as one self-contained HTML file.

    Args:
        path: Destination ``.html`` file.
        report: The JSON report as loaded.
    """
    require_renderer()
    from onnxshrink.report.page import render_html

    write_text_atomic(path, render_html(report, title=f"onnxshrink report: {Path(path).stem}"))


def write_report(path: Path, report: dict[str, Any]) -> None:
    """Writes a report as JSON, or as an HTML page when ``path`` ends in ``.html``.

    Args:
        path: Destination; its folder must exist.
        report: The JSON-serializable report of a run.
    """
    if is_html(path):
        write_html(path, report)
        return
    write_text_atomic(path, json.dumps(report, indent=2, sort_keys=True, default=str) + "\n")
