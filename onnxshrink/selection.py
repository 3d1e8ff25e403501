"""``include``/``exclude`` options: which nodes a pass touches, chosen by op type or node-name glob."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence

import onnx_ir as ir

from onnxshrink.matching import NoMatch


def matching_pattern(node: ir.Node, key: str, patterns: Iterable[str]) -> str | None:
    """The first pattern equal to the node's op type or matching ``key`` (its name) as a glob."""
    return next((p for p in patterns if p == node.op_type or fnmatch.fnmatchcase(key, p)), None)


def unselected(node: ir.Node, key: str, include: Sequence[str], exclude: Sequence[str]) -> NoMatch | None:
    """Why ``include``/``exclude`` leave the node out, or None when they select it."""
    if include and matching_pattern(node, key, include) is None:
        return NoMatch(f"not matched by include={','.join(include)}")
    if (pattern := matching_pattern(node, key, exclude)) is not None:
        return NoMatch(f"excluded by '{pattern}'")
    return None
