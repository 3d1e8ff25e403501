"""Executors of ``auto``: profile items measured in a process pool equal the serial profile, resume
from the items file, and report queued / running / done per node (real passes, real processes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import ProgressRecorder

import onnxshrink
from onnxshrink import progress
from onnxshrink.autotune.items import Item, ItemMeasure, plan
from onnxshrink.autotune.profile import profile
from onnxshrink.data.readers import open_samples
from onnxshrink.errors import UsageError
from onnxshrink.executors import LocalExecutor, NodeProgress, make_executor, measure_all
from onnxshrink.runtime import RuntimeUnavailable
from onnxshrink.spec import make_spec

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "digits_cnn.onnx"
CALIB = ROOT / "models" / "digits_calib.npz"
EVAL = ROOT / "models" / "digits_test.npz"


@pytest.fixture(scope="module")
def base():  # type: ignore[no-untyped-def]
    return onnxshrink.shrink(MODEL, [make_spec("simplify", {})], verify=False).model


@pytest.fixture(scope="module")
def serial(base, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    cache = tmp_path_factory.mktemp("serial")
    return profile(base, open_samples(str(CALIB)), provider="cpu", knobs=("channels", "int8"), cache=cache)


def _units(found) -> list[dict]:  # type: ignore[no-untyped-def]
    return [unit.to_json() for unit in found.units]


def test_items_in_two_processes_equal_the_serial_profile(base, serial, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    measure = ItemMeasure(LocalExecutor(2))
    with progress.use(ProgressRecorder()) as recorder:
        found = profile(
            base, open_samples(str(CALIB)), provider="cpu", knobs=("channels", "int8"), cache=tmp_path, measure=measure
        )
    # Each pool worker runs 1 onnxruntime thread (its share of 2 cores) where the serial profile runs
    # one per core: sums are reduced in another order, so damages agree within float tolerance.
    ours, theirs = _units(found), _units(serial)
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs, strict=True):
        assert [s["value"] for s in a["settings"]] == [s["value"] for s in b["settings"]]
        for x, y in zip(a["settings"], b["settings"], strict=True):
            assert (x["bytes"], x["macs"]) == (y["bytes"], y["macs"])
            assert x["damage"] == pytest.approx(y["damage"], rel=1e-4, abs=1e-7)
    # Only the precisions searched are built: no 4-bit variant without int4 in the knobs.
    assert measure.submitted == len(plan("channels", base)) + len(plan("precision", base, ("int8",)))
    assert len(plan("precision", base, ("int8",))) < len(plan("precision", base))
    assert isinstance(recorder, ProgressRecorder)
    last = [s for s in recorder.tasks if s.label.startswith("profile items:")][-1]
    assert last.label.startswith("profile items: 0 queued | ") and " 0 running " in last.label
    assert last.done == last.total == len(plan("precision", base, ("int8",)))
    running = [s.label for s in recorder.tasks if " 2 running " in s.label]
    assert running, "two items never ran side by side"
    # Every item went to the items files as it finished; the profile JSON was written after them.
    lines = [json.loads(line) for path in tmp_path.glob("*.items.jsonl") for line in path.read_text().splitlines()]
    assert len(lines) == measure.submitted and all(line["seconds"] > 0 for line in lines)
    assert not [line for line in lines if line["key"].endswith("/int4")]
    assert sorted(p.name.split("-")[0] for p in tmp_path.glob("*.json")) == ["channels", "precision"]


def test_a_killed_driver_resumes_with_only_the_missing_items(base, serial, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    first = ItemMeasure(LocalExecutor(1))
    profile(base, open_samples(str(CALIB)), provider="cpu", knobs=("int8",), cache=tmp_path, measure=first)
    (cached,) = tmp_path.glob("precision-*.json")
    items_file = cached.with_suffix(".items.jsonl")
    lines = items_file.read_text().splitlines()
    # As if the driver died: the profile JSON never written, two items lost and the last line torn.
    cached.unlink()
    items_file.write_text("\n".join(lines[:-3]) + "\n" + lines[-3][: len(lines[-3]) // 2])
    again = ItemMeasure(LocalExecutor(2))
    found = profile(base, open_samples(str(CALIB)), provider="cpu", knobs=("int8",), cache=tmp_path, measure=again)
    assert again.submitted == 3
    # The three items were measured on 1 onnxruntime thread each: damages within float tolerance.
    ours, theirs = _units(found), [u for u in _units(serial) if u["knob"] == "precision"]
    assert [(u["name"], [s["value"] for s in u["settings"]]) for u in ours] == [
        (u["name"], [s["value"] for s in u["settings"]]) for u in theirs
    ]
    for a, b in zip(ours, theirs, strict=True):
        for x, y in zip(a["settings"], b["settings"], strict=True):
            assert (x["bytes"], x["macs"]) == (y["bytes"], y["macs"])
            assert x["damage"] == pytest.approx(y["damage"], rel=1e-4, abs=1e-7)


def test_plan_lists_every_unit_and_setting(base) -> None:  # type: ignore[no-untyped-def]
    channels, precision = plan("channels", base), plan("precision", base)
    assert channels and all(item.knob == "channels" and isinstance(item.value, float) for item in channels)
    assert {item.value for item in precision} <= {"int8", "int4"}
    assert Item("precision", "fc", "int8").key == "precision/fc/int8"


def test_node_progress_counts_queued_running_done_per_node() -> None:
    with progress.use(ProgressRecorder()) as recorder, NodeProgress("trials", 3) as shown:
        shown.start("a")
        shown.start("b")
        shown.finish("b")
        shown.start("b")
        shown.finish("a", "c")  # retried elsewhere: counted done where it finished
    assert isinstance(recorder, ProgressRecorder)
    labels = [s.label for s in recorder.tasks]
    assert labels[0] == "trials: 3 queued"
    assert labels[2] == "trials: 1 queued | a 1 running 0 done | b 1 running 0 done"
    assert labels[-1] == "trials: 0 queued | a 0 running 0 done | b 1 running 1 done | c 0 running 1 done"
    assert recorder.tasks[-1].done == 2


def test_two_workers_journal_each_trial_once(tmp_path: Path) -> None:
    result = onnxshrink.auto(
        MODEL, calibration=str(CALIB), evaluation=str(EVAL), max_drop=1.0, study=tmp_path, max_trials=4, workers=2,
        search="int8",
    )  # fmt: skip
    assert result.report["search"]["executor"] == "local"
    keys = [t["key"] for t in result.trials]
    assert len(keys) == len(set(keys)) == len(result.trials)
    assert all(t.get("node") for t in result.trials if not t.get("resumed"))
    again = onnxshrink.auto(
        MODEL, calibration=str(CALIB), evaluation=str(EVAL), max_drop=1.0, study=tmp_path, max_trials=4, workers=2,
        search="int8", resume=True,
    )  # fmt: skip
    assert all(t.get("resumed") for t in again.trials) and again.recipe == result.recipe


def test_bad_executor_and_workers_are_usage_errors() -> None:
    with pytest.raises(UsageError, match="--executor dask: unknown"):
        make_executor("dask", 1)
    with pytest.raises(UsageError, match="--workers must be at least 1"):
        make_executor("local", 0)


class _HalfBroken:
    """A workload whose odd pieces fail, reported as an executor reports a piece lost after its retries."""

    timed = False

    def start(self) -> int:
        return 10

    def measure(self, state: int, piece: int) -> dict[str, object]:
        return {"error": "worker died"} if piece % 2 else {"value": state * piece}

    def failed(self, piece: int, reason: str) -> dict[str, object]:
        return {"error": reason}


def test_measure_all_gives_every_result_and_names_the_first_lost_piece() -> None:
    executor = LocalExecutor(workers=1)
    assert measure_all(executor, _HalfBroken(), [0, 2, 4], "double: 3 layers")[4]["value"] == 40
    with pytest.raises(RuntimeUnavailable, match=r"^double: layer 3: worker died$"):
        measure_all(executor, _HalfBroken(), [2, 3, 5], "double: 3 layers")
