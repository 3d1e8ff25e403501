"""Progress of long steps: what passes report, and what the command line shows where."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
from pathlib import Path

from helpers import ProgressRecorder

import onnxshrink
from onnxshrink import progress
from onnxshrink.passes.prune.sensitivity import GRID

SENSITIVITY = "prune:sparsity=0.5,keep-first-last=false,allocation=sensitivity,samples=64"


def test_prune_sensitivity_reports_every_trial(digits_path: Path, digits_calib_path: Path) -> None:
    with progress.use(ProgressRecorder()) as recorder:
        result = onnxshrink.shrink(digits_path, [SENSITIVITY], calibration=str(digits_calib_path), verify=False)
    assert isinstance(recorder, ProgressRecorder)
    tasks = recorder.labelled("sensitivity:")
    layers = len(result.report["passes"][0]["stats"]["layers"])
    assert tasks and all(task.finished and task.done == task.total for task in tasks)
    # 64 samples in two batches of 32; the first round has no pruned neighbours, so the dense column
    # is skipped: one step per layer, sparsity and batch.
    assert tasks[0].total == layers * (len(GRID) - 1) * 2


def test_quantize_reports_calibration_budget_and_speed(digits_path: Path, digits_calib_path: Path) -> None:
    spec = "quantize:min-cosine=0.99999,min-speedup=0.01"  # the fully quantized model misses it
    with progress.use(ProgressRecorder()) as recorder:
        result = onnxshrink.shrink(digits_path, [spec], calibration=str(digits_calib_path), verify=False)
    assert isinstance(recorder, ProgressRecorder)
    (calibration,) = recorder.labelled("quantize calibration")
    assert calibration.total == 128 and calibration.done == 128 and calibration.finished
    judging, probing, verifying = recorder.labelled("quantize budget")
    record = result.report["passes"][0]["stats"]["budget"]
    assert judging.total == judging.done == 1 and not record["candidates"][0]["holds"]
    assert probing.total == probing.done == len(record["layers"]) and probing.finished  # one run per layer
    # One step per candidate judged after the first; the total is the search's bound, 1 + 3 * bits of the layers.
    assert verifying.total == 1 + 3 * len(record["layers"]).bit_length() and verifying.finished
    assert verifying.done == len(record["candidates"]) - 1 >= 1
    (speed,) = recorder.labelled("quantize speed check")
    assert speed.total == speed.done == 7


def test_the_default_is_silent() -> None:
    with progress.task("nothing watches", total=3) as step:
        step.advance()  # no reporter installed: a no-op, and no error


def _cli(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "onnxshrink.cli", *map(str, args)]


def _env() -> dict[str, str]:
    root = str(Path(__file__).resolve().parents[1])
    return {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}


def test_pipes_get_no_progress_and_v_logs_each_pass_start(
    tmp_path: Path, digits_path: Path, digits_calib_path: Path
) -> None:
    out = tmp_path / "o.onnx"
    args = ("-v", "run", digits_path, "-o", out, "-p", "cleanup", "-p", SENSITIVITY, "--calib", digits_calib_path)
    done = subprocess.run(_cli(*args), capture_output=True, text=True, env=_env(), check=False)
    assert done.returncode == 0, done.stderr
    assert "\r" not in done.stderr and "sensitivity:" not in done.stderr
    assert "pass cleanup: started" in done.stderr and "pass prune: started" in done.stderr
    quiet = subprocess.run(_cli(*args[1:]), capture_output=True, text=True, env=_env(), check=False)
    assert quiet.returncode == 0 and "started" not in quiet.stderr


def test_a_terminal_sees_the_sensitivity_progress(tmp_path: Path, digits_path: Path, digits_calib_path: Path) -> None:
    out = tmp_path / "o.onnx"
    args = ("run", digits_path, "-o", out, "-p", SENSITIVITY, "--calib", digits_calib_path, "--no-verify")
    leader, follower = pty.openpty()
    process = subprocess.Popen(_cli(*args), stdin=follower, stdout=follower, stderr=follower, env=_env())
    os.close(follower)
    seen = b""
    while True:
        ready, _, _ = select.select([leader], [], [], 120)
        if not ready:
            break
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the terminal closed: the command has exited
            break
        if not chunk:
            break
        seen += chunk
    os.close(leader)
    assert process.wait(timeout=60) == 0, seen.decode(errors="replace")
    text = seen.decode(errors="replace")
    # Each redraw: carriage return, erase the line, then what runs with done/total and elapsed time.
    assert re.search(r"\r\x1b\[Ksensitivity: \d+ layers x 10 sparsities  \d+/\d+  \d+s", text), text
    assert text.count("\r\x1b[K") >= 2  # drawn at the start and cleared at the end
