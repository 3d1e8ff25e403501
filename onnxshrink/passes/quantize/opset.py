"""Raising a model's default-domain opset for Q/DQ, when no op in it changes meaning on the way.

Per-channel Q/DQ needs opset 13, 4-bit needs 21. Deciding and raising are separate:
:func:`opset_needed` checks the whole model up front (and refuses it before anything is
computed), :func:`raise_opset` is applied only to the model the pass keeps, so a pass that ends
up quantizing nothing leaves the opset as it was.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import onnx_ir as ir

from onnxshrink.errors import UsageError
from onnxshrink.ir.graphs import ONNX_DOMAINS, is_onnx_op, opset_version, taken_names
from onnxshrink.ir.optable import OpTable
from onnxshrink.passes.quantize.upgrade import Rewrite, attribute_to_input, flatten_softmax


def _always(node: ir.Node) -> bool:
    return True


def _softmax_not_on_last_axis(node: ir.Node) -> bool:
    """Before 13, Softmax-like ops flattened to 2-D at ``axis``: the same only on the last axis."""
    axis = node.attributes["axis"].as_int() if "axis" in node.attributes else 1
    shape = node.outputs[0].shape or (node.inputs[0].shape if node.inputs[0] is not None else None)
    return axis != -1 and (shape is None or axis != len(shape) - 1)


@dataclasses.dataclass(frozen=True)
class MeaningChange:
    """An op's meaning changed at opset ``version`` (for the nodes ``applies`` accepts)."""

    version: int
    applies: Callable[[ir.Node], bool] = _always
    rewrite: Rewrite | None = None  # what keeps the meaning; None: the model must be converted


# Registered for the opsets *before* the change: a node of an older opset would mean something
# else once the model imports ``version`` or later.
MEANING_CHANGES: OpTable[MeaningChange] = OpTable("quantize opset meaning changes")
for _op, _attribute in (("Split", "split"), ("Squeeze", "axes"), ("Unsqueeze", "axes"), ("ReduceSum", "axes")):
    MEANING_CHANGES.add(_op, MeaningChange(13, rewrite=attribute_to_input(_attribute, 1)), until=12)
_ratio = attribute_to_input("ratio", 1, np.float32)
MEANING_CHANGES.add("Dropout", MeaningChange(12, rewrite=_ratio), until=11)
for _op in ("Softmax", "LogSoftmax", "Hardmax"):
    MEANING_CHANGES.add(_op, MeaningChange(13, _softmax_not_on_last_axis, flatten_softmax), until=12)
for _op in ("ReduceMax", "ReduceMin", "ReduceMean", "ReduceProd", "ReduceL1", "ReduceL2"):  # axes became an input
    MEANING_CHANGES.add(_op, MeaningChange(18, rewrite=attribute_to_input("axes", 1)), until=17)
for _op in ("ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare"):
    MEANING_CHANGES.add(_op, MeaningChange(18, rewrite=attribute_to_input("axes", 1)), until=17)
for _op, _version in (("GridSample", 20), ("DFT", 20), ("GroupNormalization", 21)):
    MEANING_CHANGES.add(_op, MeaningChange(_version), until=_version - 1)


def opset_needed(model: ir.Model, version: int, why: str) -> int | None:
    """The default-domain opset the model must be raised to for ``why`` (None: it has it already).

    Nothing is changed; the check covers every node of the main graph and its subgraphs.

    Raises:
        UsageError: The model's opset is older than 11, or a node means something else at ``version``.
    """
    current = opset_version(model)
    if current >= version:
        return None
    if current < 11:
        raise UsageError(f"quantize: {why} needs opset {version}; the model has opset {current} (convert it first)")
    for node, change in _changes(model, current, version):
        if change.rewrite is None:
            raise UsageError(
                f"quantize: {why} needs opset {version}; node '{node.name}' ({node.op_type}) changed meaning "
                f"after opset {current}: convert the model first"
            )
    return version


def _changes(model: ir.Model, current: int, version: int) -> list[tuple[ir.Node, MeaningChange]]:
    """The nodes of the main graph and its subgraphs that mean something else at ``version``."""
    found = []
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if not is_onnx_op(node):
            continue
        for change in MEANING_CHANGES.lookup_all(node, current):
            if current < change.version <= version and change.applies(node):
                found.append((node, change))
    return found


def raise_opset(model: ir.Model, version: int | None) -> str | None:
    """Imports ``version`` of the default domain (checked by :func:`opset_needed`); returns what changed.

    Nodes whose meaning changes on the way are first rewritten to keep it (e.g. a Softmax of
    opset 11 becomes Flatten, Softmax, Reshape); their number is in the answer.
    """
    current = opset_version(model)
    if version is None or current >= version:
        return None
    changes = _changes(model, current, version)
    taken = taken_names(model)
    for node, change in changes:
        assert change.rewrite is not None  # opset_needed refused the model otherwise
        change.rewrite(node, taken)
    # Keep the model's own spelling of the default domain, so that it is not imported twice.
    spelling = next((domain for domain in ONNX_DOMAINS if domain in model.opset_imports), "")
    model.opset_imports[spelling] = version
    if version >= 21 and (model.ir_version or 0) < 10:
        model.ir_version = 10
    return f"{current}->{version}" + (f" ({len(changes)} nodes rewritten to keep their meaning)" if changes else "")
