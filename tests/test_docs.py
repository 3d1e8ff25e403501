"""The user docs in docs/: their commands and code run, their tables match the code, nothing points outside.

Each page's ``$ onnxshrink ...`` lines run in order, as test_cli.py runs the README's commands
(continued lines joined, ``/tmp/`` mapped to a temporary folder); then its ``python`` blocks run in one namespace,
and any ``test_*`` function they define is called. ``py`` blocks are sketches and are not run.
"""

from __future__ import annotations

import json
import re
import shlex
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from helpers import ROOT

from onnxshrink import registry
from onnxshrink.cli import main

DOCS = ROOT / "docs"
PAGES = sorted(path.name for path in DOCS.glob("*.md"))
# Pointers to files that live outside the project (developer background, not shipped).
OUTSIDE = ("../shared", "QDQ_RULES.md", "CHANNEL_RULES.md")
# Which pass each table describes: (page, heading) -> pass name.
OPTION_TABLES = {
    ("quantization.md", "Options"): "quantize",
    ("channels.md", "Options of `sort`"): "sort",
    ("channels.md", "Options of `prune-channels`"): "prune-channels",
}
REPORT_TABLES = {
    ("quantization.md", "The report"): "quantize",
    ("channels.md", "Report of `sort`"): "sort",
    ("channels.md", "Report of `prune-channels`"): "prune-channels",
}


def _text(page: str) -> str:
    return (DOCS / page).read_text(encoding="utf-8")


def _commands(page: str) -> list[str]:
    joined = _text(page).replace("\\\n", " ")  # continued lines
    return re.findall(r"^\$ (onnxshrink .+)$", joined, flags=re.MULTILINE)


def _python_blocks(page: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", _text(page), flags=re.MULTILINE | re.DOTALL)


def _table(page: str, heading: str) -> list[list[str]]:
    """Body rows of the first table after ``heading``, as cells (header and rule rows dropped)."""
    lines = _text(page).splitlines()
    start = next(i for i, line in enumerate(lines) if re.fullmatch(rf"#+ {re.escape(heading)}", line))
    rows: list[list[str]] = []
    for line in lines[start + 1 :]:
        if line.startswith("#"):
            break
        if line.startswith("|"):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
        elif rows:
            break
    return rows[2:]


def _names(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def _shown(value: Any) -> str:
    """A default as the docs' option tables write it."""
    if value is None:
        return "not set"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (tuple, list)):
        return ",".join(map(str, value)) if value else "empty"
    if value == "":
        return "empty"
    return str(value)


def _keys(data: Any) -> Iterator[str]:
    if isinstance(data, dict):
        for key, value in data.items():
            yield str(key)
            yield from _keys(value)
    elif isinstance(data, list):
        for item in data:
            yield from _keys(item)


def _run_commands(page: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs the page's commands in order, in-process (a fresh interpreter per command would
    triple the time), split as the shell would split them."""
    monkeypatch.chdir(ROOT)
    runner = CliRunner()
    for command in _commands(page):
        args = shlex.split(command.replace("/tmp/", f"{tmp_path}/"))
        result = runner.invoke(main, args[1:])
        assert result.exit_code == 0, f"{page}: {command}\n{result.output}\n{result.exception!r}"


def _run_python(page: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs the page's python blocks as one module, then its test_* functions; unregisters what they register."""
    monkeypatch.chdir(ROOT)
    name = "docs_" + page.removesuffix(".md").replace("-", "_")
    module = types.ModuleType(name)
    sys.modules[name] = module  # dataclasses and typing look the module up by name
    before = set(registry.passes())
    try:
        for block in _python_blocks(page):
            exec(compile(block.replace("/tmp/", f"{tmp_path}/"), f"{page} (python block)", "exec"), module.__dict__)
        for key, value in list(module.__dict__.items()):
            if key.startswith("test_") and callable(value):
                value()
    finally:
        del sys.modules[name]
        for added in set(registry.passes()) - before:
            registry.unregister(added)


@pytest.mark.parametrize("page", PAGES)
def test_page_commands_and_code_run(page: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every shown command exits 0 and every python block runs; report tables name real fields."""
    _run_commands(page, tmp_path, monkeypatch)
    _run_python(page, tmp_path, monkeypatch)
    reports = [json.loads(path.read_text()) for path in sorted(tmp_path.glob("*.json"))]
    for (table_page, heading), pass_name in REPORT_TABLES.items():
        if table_page != page:
            continue
        records = [record for report in reports for record in report["passes"] if record["name"] == pass_name]
        assert records, f"{page}: no command writes a report with a '{pass_name}' pass"
        found = {key for record in records for key in _keys(record)}
        documented = [name for row in _table(page, heading) for name in _names(row[0])]
        missing = sorted(set(documented) - found)
        assert not missing, f"{page} '{heading}' documents fields no report of its commands has: {missing}"


def test_the_docs_show_commands_and_the_example_pass() -> None:
    assert {"README.md", "quantization.md", "channels.md", "writing-passes.md"} <= set(PAGES)
    assert len(_commands("quantization.md")) >= 5 and len(_commands("channels.md")) >= 3
    example = _python_blocks("writing-passes.md")
    assert any("@register_pass" in block for block in example), "writing-passes.md lost its example pass"
    assert any("def test_" in block for block in example), "writing-passes.md lost the example's tests"


@pytest.mark.parametrize(("page", "heading"), list(OPTION_TABLES))
def test_option_tables_match_the_registry(page: str, heading: str) -> None:
    """Each option table lists every option of its pass, once, with the registry's default."""
    pass_name = OPTION_TABLES[(page, heading)]
    rows = {_names(row[0])[0]: row[1].replace("`", "") for row in _table(page, heading)}
    options = {info.key: _shown(info.default) for info in registry.options_of(registry.get_pass(pass_name))}
    assert rows == options


def _user_facing_texts() -> dict[str, str]:
    """The README, every file under docs/, and what `onnxshrink passes [NAME]` prints."""
    texts = {"README.md": (ROOT / "README.md").read_text(encoding="utf-8")}
    for path in sorted(DOCS.rglob("*")):
        if path.is_file():
            texts[str(path.relative_to(ROOT))] = path.read_text(encoding="utf-8")
    runner = CliRunner()
    for args in (["passes"], *(["passes", name] for name in registry.known_names())):
        result = runner.invoke(main, args)
        assert result.exit_code == 0, result.output
        texts["onnxshrink " + " ".join(args)] = result.output
    return texts


@pytest.mark.parametrize("pointer", OUTSIDE)
def test_nothing_users_read_points_outside_the_project(pointer: str) -> None:
    found = [where for where, text in _user_facing_texts().items() if pointer in text]
    assert not found, f"{pointer!r} is not in the project; point to docs/ instead. Found in: {', '.join(found)}"


@pytest.mark.parametrize("pointer", OUTSIDE)
def test_package_source_points_nowhere_outside(pointer: str) -> None:
    """Docstrings and comments of the package name docs/ pages, not files outside the project."""
    package = ROOT / "onnxshrink"
    found = [
        str(path.relative_to(ROOT))
        for path in sorted(package.rglob("*.py"))
        if pointer in path.read_text(encoding="utf-8")
    ]
    assert not found, f"{pointer!r} is not in the project; point to docs/ instead. Found in: {', '.join(found)}"
