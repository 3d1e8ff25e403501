"""What the channel walk carries and records: layouts, sites and the atom union-find.

A :class:`Layout` says which axis of a value holds channels and which atom sits at each position, a
:class:`Site` is one place a group's channels live, and :class:`Atoms` unifies atoms into classes
and keeps the first reason (a :class:`~onnxshrink.passbase.NoMatch`) an atom may not change.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import numpy as np
import onnx_ir as ir

from onnxshrink.ir.constants import constant_array
from onnxshrink.passbase import NoMatch

Purpose = Literal["permute", "remove"]
"""What a channel plan is built for: ``permute`` (exact reordering) or ``remove`` (lossy removal)."""

Dim = int | str | None
"""One dim of a shape: a size, a symbol, or None when unknown."""


@dataclasses.dataclass(frozen=True)
class Layout:
    """How a value carries channels: ``atoms[c]`` sits at positions ``c*inner ... c*inner+inner-1`` of ``axis``."""

    axis: int
    rank: int
    atoms: np.ndarray
    inner: int = 1


def node_name(node: ir.Node) -> str:
    """The node's name, else its first output's name, else its op type (for reasons and labels)."""
    return node.name or (node.outputs[0].name or node.op_type if node.outputs else node.op_type)


def input_at(node: ir.Node, index: int) -> ir.Value | None:
    """The node's input ``index``, or None when the node has fewer inputs (or it is omitted)."""
    return node.inputs[index] if index < len(node.inputs) else None


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
        """``op 'name'`` of the site's node, or ``value 'name'`` for a value site."""
        if self.node is None:
            return f"value '{self.value.name if self.value is not None else '?'}'"
        return f"{self.node.op_type} '{self.node.name or self.node.outputs[0].name}'"

    def constant(self) -> np.ndarray:
        """The constant tensor this site rewrites (a weight, bias or parameter)."""
        assert self.node is not None, self.describe()
        array = constant_array(self.node.inputs[self.index])
        assert array is not None, self.describe()
        return array

    def describe(self) -> str:
        """One line naming the node, the input rewritten and its channel axis."""
        where = self.node_label
        if self.kind in ("producer", "param", "consumer") and self.node is not None:
            tensor = self.node.inputs[self.index]
            name = tensor.name if tensor is not None else "?"
            text = f"{where} input {self.index} '{name}' axis {self.axis}"
        else:
            text = where
        return text + (f" x{self.inner}" if self.inner > 1 else "")


class Atoms:
    """Union-find over channel atoms, with the first reason an atom may not change."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.poison: dict[int, NoMatch] = {}

    def new(self, count: int, reason: NoMatch | None = None) -> np.ndarray:
        """Mints ``count`` atoms, refused for ``reason`` when one is given."""
        start = len(self.parent)
        self.parent.extend(range(start, start + count))
        atoms = np.arange(start, start + count, dtype=np.int64)
        if reason is not None:
            self.mark(atoms, reason)
        return atoms

    def find(self, atom: int) -> int:
        """The root of the atom's class (paths are compressed on the way)."""
        root = atom
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[atom] != root:
            self.parent[atom], atom = root, self.parent[atom]
        return root

    def union(self, a: np.ndarray, b: np.ndarray) -> None:
        """Ties ``a[i]`` and ``b[i]`` into one class, position by position."""
        for x, y in zip(a.tolist(), b.tolist(), strict=True):
            rx, ry = self.find(x), self.find(y)
            if rx != ry:
                self.parent[max(rx, ry)] = min(rx, ry)

    def mark(self, atoms: np.ndarray, reason: NoMatch) -> None:
        """Refuses the atoms for ``reason`` (an atom keeps its first reason)."""
        for atom in atoms.tolist():
            self.poison.setdefault(atom, reason)

    def roots(self, atoms: np.ndarray) -> np.ndarray:
        """The class root of each atom."""
        return np.array([self.find(a) for a in atoms.tolist()], dtype=np.int64)
