"""Which tensor dimensions are provably equal: a union-find over (value, axis) pairs.

Seeded by symbolic dim names (the same name is the same size, by ONNX convention) and by op
semantics that guarantee equality: an elementwise op keeps its input's dims, MatMul keeps A's
rows and B's columns and contracts equal sizes, Transpose permutes, Concat keeps the other
axes... A broadcast ties an output dim to the inputs that are not provably 1 there only when
they are all provably one size: two dims not known equal tie nothing, since either may be 1 at
run time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, Union

import onnx_ir as ir

from onnxshrink.ir.constants import constant_ints
from onnxshrink.ir.graphs import subgraphs_of
from onnxshrink.ir.optable import OpTable

Key = Union[tuple[str, int, int], tuple[str, str]]  # noqa: UP007 - a runtime alias
Rule = Callable[["DimClasses", ir.Node], None]
DIM_RULES: OpTable[Rule] = OpTable("fold dim classes")
"""What each op ties: registered with ``@DIM_RULES.register(op_type, ...)``, looked up at any opset."""

_SAME_SHAPE = (
    "Relu", "LeakyRelu", "Elu", "Selu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Erf", "Gelu", "Softplus",
    "Softsign", "Exp", "Log", "Sqrt", "Reciprocal", "Neg", "Abs", "Floor", "Ceil", "Round", "Sign", "Not", "IsNaN",
    "IsInf", "Cast", "CastLike", "Identity", "Dropout", "Softmax", "LogSoftmax", "Hardmax", "LayerNormalization",
    "BatchNormalization", "InstanceNormalization", "LpNormalization", "Clip", "Mish", "Sin", "Cos", "CumSum",
)  # fmt: skip
_BROADCAST = (
    "Add", "Sub", "Mul", "Div", "Pow", "Mod", "Max", "Min", "Sum", "Mean", "Where", "And", "Or", "Xor",
    "Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual", "PRelu", "BitShift",
)  # fmt: skip


def _dims(value: ir.Value | None) -> tuple[Any, ...] | None:
    if value is None or value.shape is None:
        return None
    return tuple(value.shape)


def _is_one(dim: Any) -> bool:
    return isinstance(dim, int) and dim == 1


class DimClasses:
    """Equivalence classes of dims across a model: dims in one class are provably the same size.

    A dim is keyed ``("dim", id(value), axis)``; a symbolic dim name is keyed ``("sym", name)``.
    """

    def __init__(self) -> None:
        self._parent: dict[Key, Key] = {}
        self._pinned: dict[int, ir.Value] = {}  # keeps ids stable while keys refer to values
        # root -> root of a class c: every dim of the first class is min(c, D) for a static D
        # (``Slice(x, 0, c)`` along an axis of static size D).
        self._caps: dict[Key, Key] = {}
        self._ones: set[Key] = set()  # roots of classes holding a static 1

    def key(self, value: ir.Value, axis: int) -> Key:
        """Returns the key of dim ``axis`` of ``value`` (the value is held so its id stays its own)."""
        self._pinned[id(value)] = value
        return ("dim", id(value), axis)

    def find(self, key: Key) -> Key:
        """Returns the representative of ``key``'s class."""
        parent = self._parent.setdefault(key, key)
        if parent == key:
            return key
        root = self.find(parent)
        self._parent[key] = root
        return root

    def union(self, a: Key, b: Key) -> None:
        """Records that ``a`` and ``b`` are the same size."""
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self._parent[ra] = rb
            if ra in self._caps:  # a cap is a fact about the whole class
                self._caps.setdefault(rb, self._caps.pop(ra))
            if ra in self._ones:
                self._ones.discard(ra)
                self._ones.add(rb)

    def is_one(self, key: Key) -> bool:
        """Whether ``key``'s class holds a dim that is statically 1."""
        return self.find(key) in self._ones

    def cap(self, capped: Key, bound: Key) -> None:
        """Records that ``capped`` is ``min(bound, D)`` for some static size D."""
        root = self.find(capped)
        if root != self.find(bound):
            self._caps.setdefault(root, bound)

    def capped_by(self, key: Key) -> Key | None:
        """The root of the class ``key`` is capped by (see :meth:`cap`), or None."""
        bound = self._caps.get(self.find(key))
        return None if bound is None else self.find(bound)

    def broadcast_root(self, covering: Sequence[Key]) -> Key | None:
        """The class a broadcast of ``covering`` (its operands' dims that are not provably 1) is.

        All of one class c: the result is c. Some of class c and the rest ``min(c, D)``: where
        c <= D they are c; where c > D they are D, which broadcasts with c only when D is 1
        (the result is c) and otherwise fails. Anything else: None (either may be 1).
        """
        roots = [self.find(key) for key in covering]
        for root in dict.fromkeys(roots):
            if all(r == root or self.capped_by(r) == root for r in roots):
                return root
        return None

    def apply(self, node: ir.Node) -> None:
        """Runs ``node``'s tie rule (again: later ties may let a broadcast prove more)."""
        handler = DIM_RULES.lookup(node, None)
        if handler is not None:
            handler(self, node)

    def tie(self, a: ir.Value | None, i: int, b: ir.Value | None, j: int) -> None:
        """Records that dim ``i`` of ``a`` equals dim ``j`` of ``b`` (negative axes allowed)."""
        da, db = _dims(a), _dims(b)
        if a is None or b is None or da is None or db is None:
            return
        if not (-len(da) <= i < len(da) and -len(db) <= j < len(db)):
            return
        self.union(self.key(a, i % len(da)), self.key(b, j % len(db)))

    def same(self, a: Key, b: Key) -> bool:
        """Whether ``a`` and ``b`` are provably the same size."""
        return self.find(a) == self.find(b)

    def build(self, graphs: Iterable[ir.Graph | ir.Function]) -> DimClasses:
        """Ties the dims of ``graphs`` and their subgraphs: shared symbols and per-op rules; returns self.

        A broadcast ties only what is already known equal, and a later node (a MatMul's
        contraction) can prove an earlier pair equal: ``fold`` runs each node's rule again
        (:meth:`apply`) as it reaches it, after this first sweep.
        """
        self._build_once(graphs)
        return self

    def _build_once(self, graphs: Iterable[ir.Graph | ir.Function]) -> None:
        for graph in graphs:
            self._seed_names(graph.inputs)
            if isinstance(graph, ir.Graph):
                self._seed_names(graph.initializers.values())
            for node in graph:
                self._seed_names(node.outputs)
                self.apply(node)
                for sub in subgraphs_of(node):
                    self._build_once([sub])

    def _seed_names(self, values: Iterable[ir.Value]) -> None:
        for value in values:
            for axis, dim in enumerate(_dims(value) or ()):
                if isinstance(dim, ir.SymbolicDim) and dim.value:
                    self.union(self.key(value, axis), ("sym", dim.value))
                elif _is_one(dim):
                    self._ones.add(self.find(self.key(value, axis)))


@DIM_RULES.register(*_SAME_SHAPE)
def _same_shape(classes: DimClasses, node: ir.Node) -> None:
    dims = _dims(node.inputs[0]) if node.inputs else None
    out = _dims(node.outputs[0]) if node.outputs else None
    if dims is None or out is None or len(dims) != len(out):
        return
    for axis in range(len(dims)):
        classes.tie(node.outputs[0], axis, node.inputs[0], axis)


def _tie_broadcast(
    classes: DimClasses, result: ir.Value, rank: int, operands: list[tuple[ir.Value, tuple[Any, ...]]]
) -> None:
    """Ties the first ``rank`` dims of ``result`` to the operands' dims that broadcast into them.

    Operand dims are aligned right on those ``rank`` dims. An output dim equals the operands'
    dim there when every operand that is not provably 1 there holds the same class: they are
    all one size d and the others are 1, so the broadcast is d. Two dims of different classes
    tie nothing, since either may be 1 at run time.
    """
    for axis in range(rank):
        covering = []
        for value, dims in operands:
            j = axis - (rank - len(dims))
            if j >= 0 and not _is_one(dims[j]) and not classes.is_one(classes.key(value, j)):
                covering.append(classes.key(value, j))
        root = classes.broadcast_root(covering) if covering else None
        if root is not None and _dims(result) is not None:
            classes.union(classes.key(result, axis), root)


@DIM_RULES.register(*_BROADCAST)
def _broadcast(classes: DimClasses, node: ir.Node) -> None:
    out = _dims(node.outputs[0])
    inputs = [(v, _dims(v)) for v in node.inputs if v is not None]
    if out is None or any(d is None or len(d) > len(out) for _, d in inputs):
        return
    _tie_broadcast(classes, node.outputs[0], len(out), [(v, d) for v, d in inputs if d is not None])


@DIM_RULES.register("MatMul")
def _matmul(classes: DimClasses, node: ir.Node) -> None:
    a, b = node.inputs[0], node.inputs[1]
    da, db, out = _dims(a), _dims(b), _dims(node.outputs[0])
    if a is None or b is None or da is None or db is None or out is None or len(da) < 2 or len(db) < 2:
        return
    result = node.outputs[0]
    classes.tie(a, -1, b, -2)  # the contracted sizes must match exactly
    classes.tie(result, -2, a, -2)
    classes.tie(result, -1, b, -1)
    if len(out) == max(len(da), len(db)):  # the batch dims broadcast like an elementwise op's
        _tie_broadcast(classes, result, len(out) - 2, [(a, da[:-2]), (b, db[:-2])])


@DIM_RULES.register("Transpose")
def _transpose(classes: DimClasses, node: ir.Node) -> None:
    dims = _dims(node.inputs[0])
    if dims is None:
        return
    perm_attr = node.attributes.get("perm")
    perm = list(perm_attr.as_ints()) if perm_attr is not None else list(reversed(range(len(dims))))
    for axis, source in enumerate(perm):
        classes.tie(node.outputs[0], axis, node.inputs[0], source)


@DIM_RULES.register("Reshape")
def _reshape(classes: DimClasses, node: ir.Node) -> None:
    target = constant_ints(node.inputs[1]) if len(node.inputs) > 1 else None
    allowzero = node.attributes.get("allowzero")
    if target is None or (allowzero is not None and allowzero.as_int()):
        return
    for axis, size in enumerate(target):
        if size == 0:
            classes.tie(node.outputs[0], axis, node.inputs[0], axis)


def _axes(node: ir.Node) -> list[int] | None:
    attr = node.attributes.get("axes")
    if attr is not None:
        return list(attr.as_ints())
    return constant_ints(node.inputs[1]) if len(node.inputs) > 1 else None


@DIM_RULES.register("Unsqueeze", "Squeeze")
def _unsqueeze(classes: DimClasses, node: ir.Node) -> None:
    small, big = (node.inputs[0], node.outputs[0]) if node.op_type == "Unsqueeze" else (node.outputs[0], node.inputs[0])
    axes, dims_big = _axes(node), _dims(big)
    if axes is None or dims_big is None:
        return
    removed = {a % len(dims_big) for a in axes}
    kept = [axis for axis in range(len(dims_big)) if axis not in removed]
    for small_axis, big_axis in enumerate(kept):
        classes.tie(small, small_axis, big, big_axis)


@DIM_RULES.register("Concat")
def _concat(classes: DimClasses, node: ir.Node) -> None:
    out = _dims(node.outputs[0])
    axis_attr = node.attributes.get("axis")
    if out is None or axis_attr is None:
        return
    concat_axis = axis_attr.as_int() % len(out) if out else 0
    for value in node.inputs:
        for axis in range(len(out)):
            if axis != concat_axis:
                classes.tie(node.outputs[0], axis, value, axis)


@DIM_RULES.register("Gather")
def _gather(classes: DimClasses, node: ir.Node) -> None:
    data, indices = _dims(node.inputs[0]), _dims(node.inputs[1])
    axis_attr = node.attributes.get("axis")
    if data is None or indices is None:
        return
    axis = (axis_attr.as_int() if axis_attr is not None else 0) % len(data)
    for i in range(axis):
        classes.tie(node.outputs[0], i, node.inputs[0], i)
    for i in range(len(indices)):
        classes.tie(node.outputs[0], axis + i, node.inputs[1], i)
    for i in range(axis + 1, len(data)):
        classes.tie(node.outputs[0], i + len(indices) - 1, node.inputs[0], i)
