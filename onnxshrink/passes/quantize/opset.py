"""Raising a model's default-domain opset for Q/DQ, when no op in it changes meaning on the way.

Per-channel Q/DQ needs opset 13, 4-bit needs 21. Deciding and raising are separate:
:func:`opset_needed` checks the whole model up front (and refuses it before anything is
computed), :func:`raise_opset` is applied only to the model the pass keeps, so a pass that ends
up quantizing nothing leaves the opset as it was.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import onnx_ir as ir

from onnxshrink.errors import UsageError
from onnxshrink.ir.graphs import ONNX_DOMAINS, is_onnx_op, opset_version
from onnxshrink.ir.optable import OpTable


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


# Registered for the opsets *before* the change: a node of an older opset would mean something
# else once the model imports ``version`` or later.
MEANING_CHANGES: OpTable[MeaningChange] = OpTable("quantize opset meaning changes")
for _op in ("Split", "Squeeze", "Unsqueeze", "ReduceSum"):  # an attribute became an input
    MEANING_CHANGES.add(_op, MeaningChange(13), until=12)
MEANING_CHANGES.add("Dropout", MeaningChange(12), until=11)  # ratio became an input
for _op in ("Softmax", "LogSoftmax", "Hardmax"):
    MEANING_CHANGES.add(_op, MeaningChange(13, _softmax_not_on_last_axis), until=12)
for _op in ("ReduceMax", "ReduceMin", "ReduceMean", "ReduceProd", "ReduceL1", "ReduceL2"):
    MEANING_CHANGES.add(_op, MeaningChange(18), until=17)  # axes became an input
for _op in ("ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare"):
    MEANING_CHANGES.add(_op, MeaningChange(18), until=17)
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
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if not is_onnx_op(node):
            continue
        for change in MEANING_CHANGES.lookup_all(node, current):
            if current < change.version <= version and change.applies(node):
                raise UsageError(
                    f"quantize: {why} needs opset {version}; node '{node.name}' ({node.op_type}) changed meaning "
                    f"after opset {current}: convert the model first"
                )
    return version


def raise_opset(model: ir.Model, version: int | None) -> str | None:
    """Imports ``version`` of the default domain (checked by :func:`opset_needed`); returns what changed."""
    current = opset_version(model)
    if version is None or current >= version:
        return None
    # Keep the model's own spelling of the default domain, so that it is not imported twice.
    spelling = next((domain for domain in ONNX_DOMAINS if domain in model.opset_imports), "")
    model.opset_imports[spelling] = version
    if version >= 21 and (model.ir_version or 0) < 10:
        model.ir_version = 10
    return f"{current}->{version}"
