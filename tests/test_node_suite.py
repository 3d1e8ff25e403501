"""All 1884 ONNX backend node cases: round trip, ``cleanup`` and ``simplify`` keep ORT's outputs.

The reference is onnxruntime on the original model (not the suite's expected outputs): we test
that onnxshrink changes nothing ORT computes. Cases onnxruntime itself cannot load or run are
skipped and counted in the ``node_suite_tally`` fixture; conftest.py prints the counts at the end
of the session.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, NoReturn

import onnx
import pytest
from helpers import NodeSuiteTally, assert_outputs_close, node_case_feed, node_cases, run

import onnxshrink
from onnxshrink.loading import load_proto
from onnxshrink.saving import save_model

CASES = node_cases()


@functools.lru_cache(maxsize=4)
def _reference(name: str) -> tuple[list[Any] | None, str | None]:
    case = CASES[name]
    try:
        return run(case.model, node_case_feed(case)), None
    except Exception as error:  # onnxruntime cannot load or run this case
        reason = str(error).strip().splitlines()[0][:80] if str(error).strip() else type(error).__name__
        return None, reason


def _skip(tally: NodeSuiteTally, reason: str) -> NoReturn:
    # "[ONNXRuntimeError] : 9 : NOT_IMPLEMENTED : Could not find..." -> "NOT_IMPLEMENTED"
    parts = [p.strip() for p in reason.split(":")]
    key = parts[2] if reason.startswith("[ONNXRuntimeError]") and len(parts) > 2 else reason[:60]
    tally.skips[key] = tally.skips.get(key, 0) + 1
    tally.skipped += 1
    pytest.skip(f"onnxruntime cannot run the original: {reason}")


@pytest.mark.parametrize("name", sorted(CASES))
def test_round_trip_and_cleanup_keep_outputs(name: str, tmp_path: Path, node_suite_tally: NodeSuiteTally) -> None:
    case = CASES[name]
    expected, reason = _reference(name)
    if expected is None:
        _skip(node_suite_tally, reason or "unknown")
    feed = node_case_feed(case)

    saved = tmp_path / "round_trip.onnx"
    save_model(load_proto(case.model).model, saved)
    assert_outputs_close(expected, run(str(saved), feed), context=f"{name} round trip")

    result = onnxshrink.shrink(case.model, ["cleanup"], verify=False)
    cleaned = result.to_proto()
    onnx.checker.check_model(cleaned)
    assert [o.name for o in cleaned.graph.output] == [o.name for o in case.model.graph.output]
    assert [i.name for i in cleaned.graph.input] == [i.name for i in case.model.graph.input]
    assert_outputs_close(expected, run(cleaned, feed), context=f"{name} cleanup")

    simplified = onnxshrink.shrink(case.model, ["simplify"], verify=False).to_proto()
    onnx.checker.check_model(simplified)
    assert [o.name for o in simplified.graph.output] == [o.name for o in case.model.graph.output]
    assert_outputs_close(expected, run(simplified, feed), context=f"{name} simplify")
    node_suite_tally.passed += 1
