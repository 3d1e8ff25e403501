"""What the channel walk carries and records: layouts, sites and the atom union-find.

A :class:`Layout` says which axis of a value holds channels and which atom sits at each position, a
:class:`Site` is one place a group's channels live, and :class:`_Atoms` unifies atoms into classes.
The constant and attribute readers here are shared by the rules (``onnxshrink.passes.channels.rules``,
``onnxshrink.passes.channels.index_rules``), the walk (``onnxshrink.passes.channels.walk``) and the graph edits
(``onnxshrink.passes.channels.edits``). ``onnxshrink.passes.channels`` re-exports the public names.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import onnx_ir as ir

_ONNX = ("", "ai.onnx")


@dataclasses.dataclass(frozen=True)
class Layout:
    """How a value carries channels: ``atoms[c]`` sits at positions ``c*inner ... c*inner+inner-1`` of ``axis``."""

    axis: int
    rank: int
    atoms: np.ndarray
    inner: int = 1


Dim = int | str | None


def _ints(value: ir.Value | None) -> list[int] | None:
    if value is None:
        return None
    tensor = ir.convenience.get_const_tensor(value)
    return None if tensor is None else [int(v) for v in tensor.numpy().reshape(-1).tolist()]


def _const(value: ir.Value | None) -> np.ndarray | None:
    if value is None or value.is_graph_input():
        return None
    tensor = ir.convenience.get_const_tensor(value)
    return None if tensor is None else tensor.numpy()


def _attr_int(node: ir.Node, name: str, default: int) -> int:
    attr = node.attributes.get(name)
    return attr.as_int() if attr is not None else default


def _attr_ints(node: ir.Node, name: str) -> list[int] | None:
    attr = node.attributes.get(name)
    return [int(v) for v in attr.as_ints()] if attr is not None else None


@dataclasses.dataclass(eq=False)
class Site:
    """One place a group's channels live, and what changes there when they move or go.

    Kinds: ``producer`` (a weight's output-channel axis), ``param`` (a per-channel constant:
    bias, BatchNormalization statistics, a Mul/Add operand, a depthwise filter),
    ``consumer`` (a Stop layer's input-channel axis), ``split``/``slice`` (index shifts on the
    channel axis), ``reshape`` (a shape constant carrying the channel count), ``depthwise`` (the
    ``group`` attribute), ``segment`` (a grouped Conv's channel group: permutations stay inside
    it) and ``value`` (an activation whose declared shape carries the count).

    ``index`` is the node input holding the tensor to rewrite; ``axis`` its channel axis;
    ``atoms`` the atom at each channel position; ``extra`` what the kind needs to rewrite.
    """

    kind: str
    node: ir.Node | None
    index: int
    axis: int
    atoms: np.ndarray
    inner: int = 1
    value: ir.Value | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)
    classes: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    @property
    def node_label(self) -> str:
        if self.node is None:
            return f"value '{self.value.name if self.value is not None else '?'}'"
        return f"{self.node.op_type} '{self.node.name or self.node.outputs[0].name}'"

    def constant(self) -> np.ndarray:
        """The constant tensor this site rewrites (a weight, bias or parameter)."""
        assert self.node is not None, self.describe()
        value = self.node.inputs[self.index]
        tensor = ir.convenience.get_const_tensor(value) if value is not None else None
        assert tensor is not None, self.describe()
        return tensor.numpy()

    def describe(self) -> str:
        where = self.node_label
        if self.kind in ("producer", "param", "consumer") and self.node is not None:
            tensor = self.node.inputs[self.index]
            name = tensor.name if tensor is not None else "?"
            text = f"{where} input {self.index} '{name}' axis {self.axis}"
        else:
            text = where
        return text + (f" x{self.inner}" if self.inner > 1 else "")


class _Atoms:
    """Union-find over channel atoms, with the first reason an atom may not change."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.poison: dict[int, str] = {}

    def new(self, count: int, reason: str | None = None) -> np.ndarray:
        start = len(self.parent)
        self.parent.extend(range(start, start + count))
        atoms = np.arange(start, start + count, dtype=np.int64)
        if reason is not None:
            for atom in atoms.tolist():
                self.poison.setdefault(atom, reason)
        return atoms

    def find(self, atom: int) -> int:
        root = atom
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[atom] != root:
            self.parent[atom], atom = root, self.parent[atom]
        return root

    def union(self, a: np.ndarray, b: np.ndarray) -> None:
        for x, y in zip(a.tolist(), b.tolist(), strict=True):
            rx, ry = self.find(x), self.find(y)
            if rx != ry:
                self.parent[max(rx, ry)] = min(rx, ry)

    def mark(self, atoms: np.ndarray, reason: str) -> None:
        for atom in atoms.tolist():
            self.poison.setdefault(atom, reason)

    def roots(self, atoms: np.ndarray) -> np.ndarray:
        return np.array([self.find(a) for a in atoms.tolist()], dtype=np.int64)
