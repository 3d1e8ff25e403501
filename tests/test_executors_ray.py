"""``auto --executor ray`` on a local Ray instance started by the test (nothing outside this machine):
the same profile and the same chosen recipe as the local executor on the digits model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import onnxshrink

ray = pytest.importorskip("ray")

from onnxshrink.executors.ray_cluster import RayExecutor  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "digits_cnn.onnx"
CALIB = ROOT / "models" / "digits_calib.npz"
EVAL = ROOT / "models" / "digits_test.npz"
STUDY = {"max_drop": 1.0, "max_trials": 4, "workers": 2, "search": "channels,int8", "seed": 3}


@pytest.fixture(scope="module")
def local_ray():  # type: ignore[no-untyped-def]
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _profiles(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted((folder / "profiles").glob("*.json"))}


def test_ray_gives_the_local_executors_profile_and_recipe(local_ray, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    local = onnxshrink.auto(MODEL, calibration=str(CALIB), evaluation=str(EVAL), study=tmp_path / "local", **STUDY)
    executor = RayExecutor(workers=2)
    try:
        remote = onnxshrink.auto(
            MODEL, calibration=str(CALIB), evaluation=str(EVAL), study=tmp_path / "ray", executor=executor, **STUDY
        )
        objects = executor.transfers()
    finally:
        executor.close()
    assert remote.report["search"]["executor"] == "ray"
    local_profiles, ray_profiles = _profiles(tmp_path / "local"), _profiles(tmp_path / "ray")
    assert sorted(local_profiles) == sorted(ray_profiles) and len(ray_profiles) == 2
    for name, content in local_profiles.items():  # same digests, same measurements (float tolerance)
        ours, theirs = json.loads(content), json.loads(ray_profiles[name])
        for a, b in zip(ours, theirs, strict=True):
            assert [s["value"] for s in a["settings"]] == [s["value"] for s in b["settings"]]
            for x, y in zip(a["settings"], b["settings"], strict=True):
                assert (x["bytes"], x["macs"]) == (y["bytes"], y["macs"])
                assert x["damage"] == pytest.approx(y["damage"], rel=1e-4, abs=1e-7)
    assert remote.recipe.splitlines()[1:] == local.recipe.splitlines()[1:]  # header line 0 names the study
    assert [t["key"] for t in remote.trials] == [t["key"] for t in local.trials]
    assert all(t["node"].count("/") == 1 for t in remote.trials)  # ip/node-id of the Ray node that built it
    assert (tmp_path / "ray" / "trials" / f"{remote.trials[0]['key']}.onnx").is_file()  # came back from the worker
    # One node: the model, samples and files were put once and sit in that node's object store only.
    assert set(objects) == {"files"} | {k for k in objects if k.startswith("setup-")} and len(objects) == 2
    assert all(entry["nodes"] == 1 and entry["bytes"] > 0 for entry in objects.values())
    nodes = executor.stats["nodes"]
    assert sum(n["trials"] for n in nodes.values()) == len(remote.trials)
    assert sum(n["fetches"] for n in nodes.values()) <= 4  # each of the 2 item and 2 trial workers read its data once


# rounds=2: the second round is a new workload (each layer with the others pruned) on fresh actors.
PRUNE = "prune:sparsity=0.6,allocation=sensitivity,samples=64,rounds=2"


def test_ray_measures_prune_sensitivity_like_the_serial_pass(local_ray) -> None:  # type: ignore[no-untyped-def]
    serial = onnxshrink.shrink(MODEL, [PRUNE], calibration=str(CALIB), verify=False)
    executor = RayExecutor(workers=2)
    try:
        remote = onnxshrink.shrink(MODEL, [PRUNE], calibration=str(CALIB), verify=False, executor=executor)
        assigned = executor.assigned()
    finally:
        executor.close()
    ours, theirs = remote.report["passes"][0]["stats"], serial.report["passes"][0]["stats"]
    assert ours["allocation"] == theirs["allocation"]
    measured = [name for name, layer in theirs["layers"].items() if layer.get("sensitivity")]
    assert len(measured) >= 3
    for name in theirs["layers"]:
        assert ours["layers"][name]["sparsity"] == theirs["layers"][name]["sparsity"]
    for name in measured:
        curve = theirs["layers"][name]["sensitivity"]
        assert ours["layers"][name]["sensitivity"] == pytest.approx(curve, rel=1e-4, abs=1e-9)
    assert remote.to_proto().SerializeToString() == serial.to_proto().SerializeToString()
    # Each layer of each round was one item; the second round's workload replaced the first's.
    nodes = executor.stats["nodes"]
    assert sum(entry["profile items"] for entry in nodes.values()) == 2 * len(measured)
    assert sorted(executor.stats["objects"]) == ["setup-1", "setup-2"]
    # The live (second-round) workers hold one CPU each and no GPU: num_gpus=0 unless asked.
    assert len(assigned) == 2 and all(entry == {"CPU": 1.0} for entry in assigned)
