"""Passes on an executor: ``prune:allocation=sensitivity`` measured by two local worker processes
gives the serial curves (float tolerance), the same allocation and the same model; ``run``'s
executor options; the GPUs a Ray worker declares (pure functions, no GPU needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from helpers import DIGITS, DIGITS_CALIB, ProgressRecorder

import onnxshrink
from onnxshrink import progress
from onnxshrink.cli import main
from onnxshrink.errors import UsageError
from onnxshrink.executors import LocalExecutor
from onnxshrink.executors.ray_cluster import actor_options, gpus_per_worker

# rounds=2: the second round measures each layer with the others pruned (the workload's base).
SPEC = "prune:sparsity=0.6,allocation=sensitivity,samples=64,rounds=2"


def _allocation(result: onnxshrink.ShrinkResult) -> dict[str, Any]:
    return result.report["passes"][0]["stats"]  # type: ignore[no-any-return]


def assert_same_allocation(ours: dict[str, Any], serial: dict[str, Any]) -> None:
    """Same chosen sparsities and decision; curves within float tolerance (workers run 1 thread each)."""
    assert ours["allocation"] == serial["allocation"]
    assert ours["layers"].keys() == serial["layers"].keys()
    measured = 0
    for name, layer in serial["layers"].items():
        assert ours["layers"][name]["sparsity"] == layer["sparsity"]
        if layer.get("sensitivity"):
            measured += 1
            assert ours["layers"][name]["sensitivity"] == pytest.approx(layer["sensitivity"], rel=1e-4, abs=1e-9)
    assert measured >= 3


@pytest.fixture(scope="module")
def serial() -> onnxshrink.ShrinkResult:
    return onnxshrink.shrink(DIGITS, [SPEC], calibration=str(DIGITS_CALIB), verify=False)


def test_sensitivity_on_two_local_workers_equals_serial(serial: onnxshrink.ShrinkResult) -> None:
    with progress.use(ProgressRecorder()) as recorder:
        pooled = onnxshrink.shrink(DIGITS, [SPEC], calibration=str(DIGITS_CALIB), verify=False, workers=2)
    assert_same_allocation(_allocation(pooled), _allocation(serial))
    assert pooled.to_proto().SerializeToString() == serial.to_proto().SerializeToString()
    assert isinstance(recorder, ProgressRecorder)
    # Both rounds went to the pool: every layer an item, two items side by side.
    rounds = [s for s in recorder.tasks if s.label.startswith("sensitivity:") and "on 2 local workers" in s.label]
    assert len(rounds) == 2 and all(s.done == s.total and s.total and s.total >= 3 for s in rounds)
    assert any(" 2 running " in s.label for s in recorder.tasks if s.label.startswith("profile items:"))
    assert not [s for s in recorder.tasks if s.label.startswith("sensitivity:") and "workers" not in s.label]


def test_an_executor_object_is_used_and_left_open(serial: onnxshrink.ShrinkResult) -> None:
    executor = LocalExecutor(2)
    found = onnxshrink.shrink(DIGITS, [SPEC], calibration=str(DIGITS_CALIB), verify=False, executor=executor)
    assert_same_allocation(_allocation(found), _allocation(serial))


def test_run_takes_executor_and_workers(serial: onnxshrink.ShrinkResult, tmp_path: Path) -> None:
    out = tmp_path / "pruned.onnx"
    args = ["run", str(DIGITS), "-o", str(out), "-p", SPEC, "--calib", str(DIGITS_CALIB), "--no-verify", "-q"]
    result = CliRunner().invoke(main, [*args, "--executor", "local", "--workers", "2"])
    assert result.exit_code == 0, result.stderr
    serial.save(tmp_path / "serial.onnx")
    assert out.read_bytes() == (tmp_path / "serial.onnx").read_bytes()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--executor", "dask"], "Error: Invalid value for '--executor': 'dask' is not one of 'local', 'ray'."),
        (["--workers", "0"], "Error: Invalid value for '--workers': 0 is not in the range x>=1."),
        (["--gpus-per-worker", "1"], "onnxshrink: error: --gpus-per-worker is for --executor ray"),
        (["--gpus-per-worker", "-1", "--executor", "ray"], "Error: Invalid value for '--gpus-per-worker'"),
        (["--executor", "ray", "--ray-address", "1.2.3"], "onnxshrink: error: --ray-address 1.2.3: expected auto"),
    ],
)
def test_bad_executor_options_are_one_line_usage_errors(options: list[str], message: str, tmp_path: Path) -> None:
    out = tmp_path / "never.onnx"
    args = ["run", str(DIGITS), "-o", str(out), "-p", SPEC, "--calib", str(DIGITS_CALIB), *options]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    errors = [line for line in result.stderr.splitlines() if "rror" in line]
    assert len(errors) == 1 and errors[0].startswith(message), result.stderr
    assert not out.exists()


def test_the_api_refuses_bad_executor_options_before_any_work() -> None:
    with pytest.raises(UsageError, match="--executor dask: unknown; valid: local, ray"):
        onnxshrink.shrink(DIGITS, [SPEC], calibration=str(DIGITS_CALIB), executor="dask")
    with pytest.raises(UsageError, match="--workers must be at least 1, got 0"):
        onnxshrink.shrink(DIGITS, [SPEC], calibration=str(DIGITS_CALIB), workers=0)


def test_ray_workers_declare_gpus_only_when_asked_or_cuda_on_a_gpu_cluster() -> None:
    assert gpus_per_worker(None, "cpu", 4) == 0
    assert gpus_per_worker(None, "auto", 4) == 0  # auto may run on CPU: never hold GPUs for it
    assert gpus_per_worker(None, "cuda", 0) == 0  # nothing to declare on a CPU-only cluster
    assert gpus_per_worker(None, "cuda", 4) == 1
    assert gpus_per_worker(0.5, "cpu", 1) == 0.5
    with pytest.raises(UsageError, match="--gpus-per-worker 1: the Ray cluster declares 0 GPU"):
        gpus_per_worker(1, "cuda", 0)
    cluster = {"CPU": 16.0, "GPU": 2.0, "latency_device": 1.0}
    options, count = actor_options(cluster, workers=8, retries=2, gpus=1.0, timed=False)
    assert options == {
        "num_cpus": 1,
        "num_gpus": 1.0,
        "max_restarts": 2,
        "max_task_retries": 2,
        "scheduling_strategy": "SPREAD",
    }
    assert count == 2  # one actor per GPU: an actor waiting for a GPU would stall its pool
    assert actor_options(cluster, workers=8, retries=2, gpus=0.5, timed=False)[1] == 4
    options, count = actor_options(cluster, workers=8, retries=2, gpus=0.0, timed=True)
    assert options["num_gpus"] == 0.0 and options["resources"] == {"latency_device": 1} and count == 1
    assert actor_options({"CPU": 16.0}, workers=8, retries=2, gpus=0.0, timed=False)[1] == 8


def test_quantize_budget_on_two_local_workers_equals_serial() -> None:
    # The budget judges its candidates one after the other (each depends on the last): the
    # executor is not used, and the result is the serial one.
    spec = "quantize:samples=64,min-cosine=0.99999"
    serial = onnxshrink.shrink(DIGITS, [spec], calibration=str(DIGITS_CALIB), verify=False)
    pooled = onnxshrink.shrink(DIGITS, [spec], calibration=str(DIGITS_CALIB), verify=False, workers=2)
    ours, theirs = pooled.report["passes"][0]["stats"]["budget"], serial.report["passes"][0]["stats"]["budget"]
    assert len(theirs["layers"]) >= 3 and ours == theirs
    assert "float" in {layer["decision"] for layer in theirs["layers"].values()}  # the budget kept a layer float
    assert pooled.to_proto().SerializeToString() == serial.to_proto().SerializeToString()
