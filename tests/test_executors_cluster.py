"""A two-node Ray cluster on the loopback address, the worker node killed mid-study: the study
finishes and every trial is recorded exactly once. Slow (a cluster forms in about 25 s): run by
hand with ``-m slow`` or by benchmarks/scaling.py --cluster.

The test starts ``ray start --head --block`` and ``ray start --address ... --block`` in their own
process groups with one fresh token (``RAY_AUTH_MODE=token``), and stops exactly those processes by
their ids (never ``ray stop``, which would stop every Ray process on the machine).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")


pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "digits_cnn.onnx"
CALIB = ROOT / "models" / "digits_calib.npz"
EVAL = ROOT / "models" / "digits_test.npz"
RAY = str(Path(sys.executable).with_name("ray"))
# The driver runs in its own process: Ray reads RAY_AUTH_MODE and RAY_AUTH_TOKEN when it is imported.
DRIVER = f"""
import json, sys, time
import ray, onnxshrink
from onnxshrink.executors.ray_cluster import RayExecutor
from onnxshrink.autotune.study import TrialJournal

ray.init(address=sys.argv[1], log_to_driver=False)
deadline = time.monotonic() + 120
while sum(node["Alive"] for node in ray.nodes()) < 2:
    assert time.monotonic() < deadline, "the worker node never joined"
    time.sleep(1)
nodes = sum(node["Alive"] for node in ray.nodes())
executor = RayExecutor(workers=2, retries=2)
result = onnxshrink.auto(
    {str(MODEL)!r}, calibration={str(CALIB)!r}, evaluation={str(EVAL)!r}, study=sys.argv[2], max_drop=1.0,
    max_trials=5, workers=2, search="int8", executor=executor,
)
objects = executor.transfers()
fetches = {{node: entry["fetches"] for node, entry in executor.stats["nodes"].items()}}
executor.close()
journal = TrialJournal(__import__("pathlib").Path(sys.argv[2]), result.report["study"]["name"], resume=True)
recorded = [t.user_attrs["record"]["key"] for t in journal.study.get_trials(deepcopy=False)]
trials = [t["key"] for t in result.trials]
errors = [t.get("error") for t in result.trials]
found = {{"trials": trials, "journal": recorded, "errors": errors, "nodes": nodes}}
print(json.dumps({{**found, "objects": objects, "fetches": fetches}}))
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _stop(process: subprocess.Popen[bytes], sig: int) -> None:
    if process.poll() is None:
        os.killpg(process.pid, sig)  # the group this test created for the node: its raylet and workers
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)


def test_a_dead_worker_node_loses_no_trial(tmp_path: Path) -> None:
    token = secrets.token_hex(32)
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, "PYTHONPATH": str(ROOT)}
    port = _free_port()
    common = ["--block", "--node-ip-address=127.0.0.1", "--disable-usage-stats"]
    head_args = [RAY, "start", "--head", f"--port={port}", "--num-cpus=3", "--include-dashboard=false", *common]
    worker_args = [RAY, "start", f"--address=127.0.0.1:{port}", "--num-cpus=2", *common]
    logs = tmp_path / "logs"
    logs.mkdir()
    started: list[subprocess.Popen[bytes]] = []
    try:
        with (logs / "head.txt").open("wb") as out:
            started.append(subprocess.Popen(head_args, env=env, stdout=out, stderr=out, start_new_session=True))
        time.sleep(5)
        with (logs / "worker.txt").open("wb") as out:
            worker = subprocess.Popen(worker_args, env=env, stdout=out, stderr=out, start_new_session=True)
        started.append(worker)
        driver = subprocess.Popen(
            [sys.executable, "-c", DRIVER, f"127.0.0.1:{port}", str(tmp_path / "study")],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        )  # fmt: skip
        started.append(driver)  # type: ignore[arg-type]
        killed = threading.Event()

        def kill_when_trials_run() -> None:  # the profile is done and trials are running on both nodes
            while not (tmp_path / "study" / "trials").is_dir() and driver.poll() is None:
                time.sleep(0.2)
            time.sleep(2)
            _stop(worker, signal.SIGKILL)
            killed.set()

        threading.Thread(target=kill_when_trials_run, daemon=True).start()
        out, err = driver.communicate(timeout=400)
        assert driver.returncode == 0, err[-3000:]
        found = json.loads(out.strip().splitlines()[-1])
        assert killed.is_set() and worker.poll() is not None
        keys = found["trials"]
        assert len(keys) == len(set(keys)) >= 2
        assert found["nodes"] == 2  # both nodes were up when the study started
        # The model and data were put once; no object store holds more than its one copy (the dead
        # node's copy is gone with it), whatever the number of workers that read them.
        assert found["objects"] and all(0 < entry["nodes"] <= 2 for entry in found["objects"].values())
        print(json.dumps({"objects": found["objects"], "fetches": found["fetches"], "trials": len(keys)}))
        assert sorted(found["journal"]) == sorted(keys)  # every trial journaled exactly once
        assert all(error is None or error.startswith("ray:") for error in found["errors"])
    finally:
        for process in reversed(started):
            _stop(process, signal.SIGTERM)
