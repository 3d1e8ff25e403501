"""Shared fixtures and the node-suite summary printed at the end of a run."""

from __future__ import annotations

import sys

import pytest


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    # Under --import-mode=importlib the module's name depends on the rootdir; find it by content.
    module = next((m for m in list(sys.modules.values()) if hasattr(m, "NODE_SUITE_COUNTS")), None)
    if module is None:
        return
    counts = module.NODE_SUITE_COUNTS
    if not sum(counts.values()):
        return
    terminalreporter.write_line(
        f"ONNX node suite: {counts['passed']} passed, {counts['skipped']} skipped (onnxruntime cannot run the original)"
    )
    for reason, count in sorted(module.NODE_SUITE_SKIPS.items(), key=lambda kv: -kv[1]):
        terminalreporter.write_line(f"  skipped {count:4d}: {reason}")
