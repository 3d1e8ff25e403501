"""Shared fixtures, and the node-suite summary printed at the end of a run.

The helpers these fixtures use are in the ``helpers`` package; test modules import them from
there, never from one another.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import onnx
import onnx_ir as ir
import pytest
from helpers import (
    DIGITS,
    DIGITS_CALIB,
    DIGITS_TEST,
    REAL_MODELS,
    ModelFile,
    NodeSuiteTally,
    PassRegistrations,
    RealModel,
    fetch,
    parse_model,
)

# --------------------------------------------------------------------------- models and files


@pytest.fixture(scope="module", params=REAL_MODELS, ids=lambda m: m.id)
def real_model(request: pytest.FixtureRequest) -> tuple[RealModel, Path]:
    """Each real third-party model in turn: its table entry and the path of its cached file."""
    return request.param, fetch(request.param)


@pytest.fixture
def digits_path() -> Path:
    """The bundled digits CNN (``models/digits_cnn.onnx``, input ``input[N,1,8,8]``)."""
    return DIGITS


@pytest.fixture
def digits_calib_path() -> Path:
    """128 calibration samples for the digits CNN (``models/digits_calib.npz``)."""
    return DIGITS_CALIB


@pytest.fixture
def digits_test_path() -> Path:
    """Labelled test samples for the digits CNN (``models/digits_test.npz``, with ``labels``)."""
    return DIGITS_TEST


@pytest.fixture
def model_file(tmp_path: Path) -> ModelFile:
    """Writes a model into ``tmp_path`` and returns its path.

    ``model_file(model, name="model.onnx", external_data=None)``: ``name`` may hold folders, which
    are made. ``model`` is a ``ModelProto``,
    an ``onnx_ir.Model`` or ONNX text (parsed by ``helpers.parse_model`` without the checker, so a
    model broken on purpose can be written). ``external_data`` names the file that then holds
    every weight, next to the model.
    """

    def write(
        model: onnx.ModelProto | ir.Model | str, name: str = "model.onnx", external_data: str | None = None
    ) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        proto = parse_model(model, check=False) if isinstance(model, str) else model
        if isinstance(proto, ir.Model):
            proto = ir.serde.serialize_model(proto)
        if external_data is None:
            onnx.save_model(proto, os.fspath(path))
        else:
            onnx.save_model(
                proto, os.fspath(path), save_as_external_data=True, location=external_data, size_threshold=0
            )
        return path

    return write


# --------------------------------------------------------------------------- temporary passes


@pytest.fixture
def registrations() -> Iterator[PassRegistrations]:
    """Register passes and presets for one test; they are unregistered when it ends."""
    with PassRegistrations() as scratch:
        yield scratch


@pytest.fixture(scope="module")
def module_registrations() -> Iterator[PassRegistrations]:
    """Register passes and presets for one test module; unregistered after its last test."""
    with PassRegistrations() as scratch:
        yield scratch


# --------------------------------------------------------------------------- ONNX node suite tally


_NODE_SUITE = pytest.StashKey[NodeSuiteTally]()


@pytest.fixture(scope="session")
def node_suite_tally(pytestconfig: pytest.Config) -> NodeSuiteTally:
    """Counts kept for the summary printed at the end of the run."""
    return pytestconfig.stash.setdefault(_NODE_SUITE, NodeSuiteTally())


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    tally = config.stash.get(_NODE_SUITE, None)
    if tally is None or not tally.passed + tally.skipped:
        return
    terminalreporter.write_line(
        f"ONNX node suite: {tally.passed} passed, {tally.skipped} skipped (onnxruntime cannot run the original)"
    )
    for reason, count in sorted(tally.skips.items(), key=lambda kv: -kv[1]):
        terminalreporter.write_line(f"  skipped {count:4d}: {reason}")
