"""Report files: JSON and HTML written with the user's umask; the HTML page rendered in a real Chromium.

The browser test starts Debian's ``chromium`` headless, drives it over the DevTools protocol
(``websocket-client``), collects console errors and uncaught exceptions, checks that every plot
drew its SVG, and takes a screenshot that must not be blank.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from helpers import DIGITS, DIGITS_CALIB, DIGITS_TEST, ROOT

from onnxshrink.cli import main

CHROMIUM = Path("/usr/bin/chromium")
# One pipeline that fills every section of the page: channel widths, sensitivity curves,
# quantization decisions and the numerics after each pass.
PIPELINE = ["-p", "prune-channels:ratio=0.25", "-p", "prune:sparsity=0.5,allocation=sensitivity", "-p", "quantize"]
PLOTS = ["plot-passes", "plot-channels-1", "plot-sensitivity-2", "plot-quantize-3", "plot-verification"]


def _invoke(*args: object) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


@contextmanager
def _umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


@pytest.fixture(scope="module")
def json_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A JSON report of the digits CNN through prune-channels, prune by sensitivity and quantize."""
    folder = tmp_path_factory.mktemp("report")
    report = folder / "digits.json"
    code, _, stderr = _invoke(
        "run", DIGITS, "-o", folder / "out.onnx", *PIPELINE, "--calib", DIGITS_CALIB,
        "--inputs", DIGITS_TEST, "--verify-each", "--report", report,
    )  # fmt: skip
    assert code == 0, stderr
    return report


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_run_report_files_follow_the_umask(tmp_path: Path, mask: int) -> None:
    """JSON and HTML reports get 0666 less the umask, like any file the user writes (not 0600)."""
    with _umask(mask):
        for name in ("r.json", "r.html"):
            code, _, stderr = _invoke(
                "run", DIGITS, "-o", tmp_path / f"{name}.onnx", "-p", "cleanup", "--report", tmp_path / name
            )
            assert code == 0, stderr
            assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~mask
    assert "<html" in (tmp_path / "r.html").read_text(encoding="utf-8")
    assert json.loads((tmp_path / "r.json").read_text())["passes"][0]["name"] == "cleanup"
    assert not list(tmp_path.glob(".*")), "a temporary file was left behind"


def test_report_command_renders_every_section(json_report: Path, tmp_path: Path) -> None:
    page_path = tmp_path / "digits.html"
    code, stdout, stderr = _invoke("report", json_report, "-o", page_path)
    assert code == 0, stderr
    assert str(page_path) in stdout
    page = page_path.read_text(encoding="utf-8")
    for plot in PLOTS:
        assert f'id="{plot}"' in page
    # Self-contained: plotly.js is inline, once; nothing else is fetched from anywhere.
    from plotly.offline import get_plotlyjs

    assert page.count(get_plotlyjs()) == 1
    rest = page.replace(get_plotlyjs(), "").lower()
    assert "src=" not in rest and "<link" not in rest and "http" not in rest.replace("http-equiv", "")
    assert "/fc1/Gemm" in page and "s8 symmetric, per-channel axis 0" in page


@pytest.mark.parametrize(
    ("make", "output", "message"),
    [
        (lambda d: d / "missing.json", "r.html", "report not found"),
        (lambda d: _write(d / "bad.json", "{not json"), "r.html", "not a JSON report"),
        (lambda d: _write(d / "other.json", '{"a": 1}'), "r.html", "not an onnxshrink report"),
        (lambda d: _write(d / "ok.json", '{"passes": []}'), "r.txt", "name it *.html"),
        (lambda d: _write(d / "ok.json", '{"passes": []}'), "nodir/r.html", "does not exist"),
    ],
)
def test_report_command_usage_errors(tmp_path: Path, make: Any, output: str, message: str) -> None:
    """Bad input or output paths are usage errors: exit 2, one line, nothing written."""
    code, _, stderr = _invoke("report", make(tmp_path), "-o", tmp_path / output)
    assert code == 2
    assert message in stderr and len(stderr.strip().splitlines()) == 1
    assert not (tmp_path / output).exists()


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


class _DevTools:
    """A minimal DevTools-protocol client on one page target: commands, and the events between them."""

    def __init__(self, url: str) -> None:
        import websocket

        # Chromium refuses websocket clients that send an Origin header it was not told to allow.
        self.socket = websocket.create_connection(url, timeout=60, suppress_origin=True)
        self.events: list[dict[str, Any]] = []
        self.next_id = 0

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        self.socket.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv())
            if message.get("id") == self.next_id:
                assert "error" not in message, f"{method}: {message['error']}"
                return dict(message["result"])
            self.events.append(message)

    def wait_for(self, method: str) -> None:
        while not any(event.get("method") == method for event in self.events):
            self.events.append(json.loads(self.socket.recv()))

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    def errors(self) -> list[str]:
        found = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert", "warning"):
                found.append(f"console.{params['type']}: {params.get('args')}")
            elif method == "Runtime.exceptionThrown":
                found.append(f"uncaught: {params['exceptionDetails']}")
            elif method == "Log.entryAdded" and params["entry"].get("level") in ("error", "warning"):
                found.append(f"log: {params['entry'].get('text')}")
        return found


@contextmanager
def _chromium(profile: Path) -> Iterator[_DevTools]:
    """Headless Chromium with DevTools on 127.0.0.1 (a free port it picks), stopped by its pid."""
    command = [
        str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={profile}", "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
        "--window-size=1280,2000", "--hide-scrollbars", "about:blank",
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.is_file() and port_file.read_text().strip()):
            assert process.poll() is None, f"chromium exited with {process.returncode}"
            assert time.monotonic() < deadline, "chromium did not open its DevTools port in 60 s"
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30) as response:
            targets = json.loads(response.read())
        page = next(target for target in targets if target.get("type") == "page")
        devtools = _DevTools(page["webSocketDebuggerUrl"])
        try:
            yield devtools
        finally:
            devtools.socket.close()
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)


# Counts the screenshot's pixels that are not the page's white background, in a blank page of
# the same browser (the screenshot is decoded by Chromium itself: no image library needed).
_INK = """
new Promise((resolve, reject) => {
  const image = new Image();
  image.onload = () => {
    const canvas = document.createElement("canvas");
    canvas.width = image.width; canvas.height = image.height;
    const context = canvas.getContext("2d");
    context.drawImage(image, 0, 0);
    const pixels = context.getImageData(0, 0, image.width, image.height).data;
    let ink = 0; const colors = new Set();
    for (let i = 0; i < pixels.length; i += 4) {
      if (pixels[i] < 240 || pixels[i + 1] < 240 || pixels[i + 2] < 240) ink++;
      colors.add((pixels[i] << 16) | (pixels[i + 1] << 8) | pixels[i + 2]);
    }
    resolve({ink: ink / (pixels.length / 4), colors: colors.size, width: image.width});
  };
  image.onerror = () => reject(new Error("screenshot is not a decodable PNG"));
  image.src = "data:image/png;base64,%s";
})
"""

# For each plot: its SVG layers, and the drawn marks (lines, bars, points) inside them.
_PLOTS = """
Array.from(document.querySelectorAll(".js-plotly-plot")).map(plot => ({
  id: plot.id,
  svgs: plot.querySelectorAll("svg.main-svg").length,
  marks: plot.querySelectorAll("g.trace path, g.trace .point").length,
  height: plot.getBoundingClientRect().height,
}))
"""


@pytest.mark.skipif(
    not CHROMIUM.is_file(), reason="needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)"
)
def test_html_report_renders_in_chromium(json_report: Path, tmp_path: Path) -> None:
    """The page opens offline in a real browser: every plot drawn, no console errors, not blank."""
    page_path = tmp_path / "digits.html"
    code, _, stderr = _invoke("report", json_report, "-o", page_path)
    assert code == 0, stderr
    with _chromium(tmp_path / "profile") as browser:
        browser.call("Runtime.enable")
        browser.call("Log.enable")
        browser.call("Page.enable")
        browser.call("Page.navigate", url=page_path.as_uri())
        browser.wait_for("Page.loadEventFired")
        # plotly draws in promises it starts at load; give them a tick to settle.
        browser.evaluate("new Promise(resolve => setTimeout(resolve, 500))")
        plots = browser.evaluate(_PLOTS)
        shot = browser.call("Page.captureScreenshot", format="png")["data"]
        (tmp_path / "digits.png").write_bytes(base64.b64decode(shot))
        assert browser.errors() == []
        browser.call("Page.navigate", url="about:blank")
        ink = browser.evaluate(_INK % shot)
    assert sorted(plot["id"] for plot in plots) == sorted(PLOTS)
    for plot in plots:
        assert plot["svgs"] >= 1 and plot["marks"] >= 1 and plot["height"] > 100, plot
    assert ink["width"] >= 1000
    assert ink["ink"] > 0.02 and ink["colors"] > 50, f"the screenshot looks blank: {ink}"


@pytest.mark.skipif(shutil.which("onnxshrink") is None, reason="needs the installed console script")
def test_run_html_report_from_the_console_script(tmp_path: Path) -> None:
    """``run --report out.html`` writes the page directly, from the real console script."""
    command = [
        "onnxshrink",
        "run",
        DIGITS,
        "-o",
        tmp_path / "o.onnx",
        "-p",
        "simplify",
        "--report",
        tmp_path / "r.html",
    ]
    result = subprocess.run([str(part) for part in command], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert 'id="plot-passes"' in (tmp_path / "r.html").read_text(encoding="utf-8")


def test_readme_report_command_works(tmp_path: Path) -> None:
    """The README's ``onnxshrink report`` line runs as written, on the JSON its 'Try it' command writes."""
    text = (ROOT / "README.md").read_text(encoding="utf-8").replace("\\\n", " ")
    commands = re.findall(r"^\$ (.+)$", text, flags=re.MULTILINE)
    try_it = next(c[c.index("onnxshrink run") :] for c in commands if "onnxshrink run" in c and "/tmp/r.json" in c)
    report_commands = [c for c in commands if c.startswith("onnxshrink report")]
    assert report_commands, "README lost its 'onnxshrink report' example"
    for command in [try_it, *report_commands]:
        command = command.replace("/tmp/", f"{tmp_path}/")
        result = subprocess.run(command, shell=True, cwd=ROOT, capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stderr
    assert 'id="plot-passes"' in (tmp_path / "r.html").read_text(encoding="utf-8")


def test_page_escapes_names_and_carries_the_json() -> None:
    """Names from the model are text, never markup; the report rides along as JSON, intact."""
    from onnxshrink.report.page import render_html

    hostile = "</script><script>alert(1)</script>"
    stats = {"nodes": {hostile: {"op": "Conv", "inputs": [], "weight": "s8"}}, "skipped": {hostile: "why <b>"}}
    report = {"passes": [{"name": "quantize", "modified": True, "nodes_before": 1, "nodes_after": 3, "stats": stats}]}
    page = render_html(report)
    assert "<script>alert(1)" not in page and "<b>" not in page
    assert "&lt;/script&gt;&lt;script&gt;alert(1)" in page
    carried = re.search(r'<script type="application/json" id="onnxshrink-report">(.*?)</script>', page, re.S)
    assert carried is not None and json.loads(carried.group(1)) == report


def test_report_without_plotly_is_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the ``report`` extra: exit 2 and how to install it, nothing written."""
    report = _write(tmp_path / "r.json", '{"passes": []}')
    monkeypatch.setitem(sys.modules, "plotly", None)  # what Python does when a package is absent
    code, _, stderr = _invoke("report", report, "-o", tmp_path / "r.html")
    assert code == 2
    assert "pip install 'onnxshrink[report]'" in stderr and len(stderr.strip().splitlines()) == 1
    assert not (tmp_path / "r.html").exists()
