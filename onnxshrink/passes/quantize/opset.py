"""Raising a model's default-domain opset for Q/DQ (per-channel needs 13, 4-bit needs 21) when
no op in it changes meaning between the two versions."""

from __future__ import annotations

import onnx_ir as ir

from onnxshrink.errors import UsageError

# Ops whose opset-13 form means something else at opset 21 (attribute moved to an input or
# semantics changed): 4-bit weights need opset 21, so a model using them must be converted first.
_CHANGED_BEFORE_21 = {
    **{op: 18 for op in ("ReduceMax", "ReduceMin", "ReduceMean", "ReduceProd", "ReduceL1", "ReduceL2")},
    **{op: 18 for op in ("ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare")},
    "GridSample": 20,
    "DFT": 20,
    "GroupNormalization": 21,
}

# Ops whose attribute became an input at 13 (Dropout's ratio at 12): a model using them is converted first.
_ATTRIBUTE_TO_INPUT_13 = ("Split", "Squeeze", "Unsqueeze", "ReduceSum", "Dropout")


def _default_opset(model: ir.Model) -> int:
    return model.opset_imports.get("", model.opset_imports.get("ai.onnx", 1))


def require_opset(model: ir.Model, version: int, why: str) -> str | None:
    """Raises the default-domain opset to ``version`` when no op changes meaning; returns what changed."""
    current = _default_opset(model)
    if current >= version:
        return None
    if current < 11:
        raise UsageError(f"quantize: {why} needs opset {version}; the model has opset {current} (convert it first)")
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if node.domain not in ("", "ai.onnx"):
            continue
        changed_at = _CHANGED_BEFORE_21.get(node.op_type)
        if current < 13 and (changed_at is None or changed_at > version):
            changed_at = 13 if _changed_at_13(node) else None
        if changed_at is not None and current < changed_at <= version:
            raise UsageError(
                f"quantize: {why} needs opset {version}; node '{node.name}' ({node.op_type}) changed meaning "
                f"after opset {current}: convert the model first"
            )
    model.opset_imports[""] = version
    if version >= 21 and (model.ir_version or 0) < 10:
        model.ir_version = 10
    return f"{current}->{version}"


def _changed_at_13(node: ir.Node) -> bool:
    """Whether an opset-11/12 node means something else at 13: an attribute became an input
    (Split, Squeeze, Unsqueeze, ReduceSum; Dropout's ratio at 12), or Softmax-like ops not on the
    last axis (before 13 they flattened to 2-D at ``axis``)."""
    if node.op_type in _ATTRIBUTE_TO_INPUT_13:
        return True
    if node.op_type not in ("Softmax", "LogSoftmax", "Hardmax"):
        return False
    axis = node.attributes["axis"].as_int() if "axis" in node.attributes else 1
    shape = node.outputs[0].shape or (node.inputs[0].shape if node.inputs[0] is not None else None)
    return axis != -1 and (shape is None or axis != len(shape) - 1)
