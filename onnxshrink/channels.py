"""Channel dependency groups: which tensors carry a producer's output channels, and how to change them.

The analysis (:func:`analyze`) is one forward walk over the main graph in topological order. Every
producer (Conv, ConvTranspose, Gemm, MatMul with a constant weight) mints one *atom* per output
channel; each value then carries a :class:`Layout` (which axis holds channels, and the atom at each
position) as far as the rule table of ``CHANNEL_RULES.md`` lets it travel: pass-through ops keep it,
Transpose/Squeeze/Unsqueeze/Reduce move the axis, Concat/Split/Slice shift indices, Flatten/Reshape
expand each channel into ``inner`` features, depthwise Conv ties input to output, and coupling ops
(Add/Mul/... of two activations) unify their inputs' atoms position by position. Unified atoms form
a *class* (one channel that must move or go as a whole); classes linked through a producer form a
:class:`ChannelGroup`, the unit that is permuted or shrunk at once. A group that reaches a graph
input or output, an unknown op or (for removal) a lossy op is refused with its reasons.

The plan is plain data (:meth:`ChannelPlan.describe`). :func:`permute` and :func:`remove` apply
decisions to the graph: every weight, per-channel constant, Split size, Slice bound, Reshape
constant and depthwise ``group`` the group touches is rewritten, copy-on-write.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from collections.abc import Iterator, Mapping
from typing import Any, Literal

import networkx as nx
import numpy as np
import onnx_ir as ir

from onnxshrink.errors import UsageError

logger = logging.getLogger(__name__)

__all__ = [
    "ChannelGroup",
    "ChannelPlan",
    "Layout",
    "Purpose",
    "Site",
    "analyze",
    "iter_ok",
    "permute",
    "remove",
    "set_constant_input",
]

Purpose = Literal["permute", "remove"]
_ONNX = ("", "ai.onnx")


@dataclasses.dataclass(frozen=True)
class Layout:
    """How a value carries channels: ``atoms[c]`` sits at positions ``c*inner ... c*inner+inner-1`` of ``axis``."""

    axis: int
    rank: int
    atoms: np.ndarray
    inner: int = 1


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

    def describe(self) -> str:
        where = self.node_label
        if self.kind in ("producer", "param", "consumer") and self.node is not None:
            tensor = self.node.inputs[self.index]
            name = tensor.name if tensor is not None else "?"
            text = f"{where} input {self.index} '{name}' axis {self.axis}"
        else:
            text = where
        return text + (f" x{self.inner}" if self.inner > 1 else "")


@dataclasses.dataclass
class ChannelGroup:
    """Channels that must be permuted or removed together.

    Attributes:
        index: Position of the group in the plan.
        size: Number of channel classes (channels of the group's space).
        classes: Root atom of each class, in canonical order (local index = position here).
        sites: Every tensor, attribute and constant the group touches.
        blocks: Local class indices that may only be permuted among themselves (Split, Slice,
            Concat segments); one block for a plain group.
        reasons: Why the group is refused; empty when it can be changed.
    """

    index: int
    size: int
    classes: np.ndarray
    sites: list[Site]
    blocks: list[np.ndarray]
    reasons: list[str]

    @property
    def ok(self) -> bool:
        return not self.reasons

    @property
    def label(self) -> str:
        names = [site.node_label for site in self.sites if site.kind == "producer"]
        unique = list(dict.fromkeys(names))
        return unique[0] + (f" (+{len(unique) - 1})" if len(unique) > 1 else "") if unique else f"group{self.index}"

    def of_kind(self, *kinds: str) -> list[Site]:
        return [site for site in self.sites if site.kind in kinds]

    def local(self, site: Site) -> np.ndarray:
        """The local class index at each channel position of ``site`` (-1 where another group's)."""
        lookup = dict(zip(self.classes.tolist(), range(self.size), strict=True))
        return np.array([lookup.get(int(c), -1) for c in site.classes], dtype=np.int64)

    def describe(self) -> dict[str, Any]:
        """Plain data: producers, parameters, index maps, consumers and reasons."""
        by_kind: dict[str, list[str]] = {}
        for site in self.sites:
            if site.kind != "value":
                by_kind.setdefault(site.kind, []).append(site.describe())
        return {
            "label": self.label,
            "channels": self.size,
            "blocks": [len(b) for b in self.blocks],
            **by_kind,
            "reasons": list(self.reasons),
        }


@dataclasses.dataclass
class ChannelPlan:
    """The channel groups of a model for one purpose (``permute`` or ``remove``)."""

    purpose: Purpose
    groups: list[ChannelGroup]

    def describe(self) -> list[dict[str, Any]]:
        return [group.describe() for group in self.groups]


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


def analyze(model: ir.Model, purpose: Purpose = "remove") -> ChannelPlan:
    """Builds the channel groups of the main graph; nothing in the model changes.

    Args:
        model: The model to analyze (its main graph; subgraphs and functions are not entered,
            and a channel used inside one refuses its group).
        purpose: ``permute`` accepts ops that are permutation-equivariant but lossy for removal
            (reductions and Softmax over the channel axis, Shape); ``remove`` refuses them.
    """
    atoms = _Atoms()
    walker = _Walker(model, purpose, atoms)
    walker.run()
    return _group(walker.sites, atoms, purpose)


def _group(sites: list[Site], atoms: _Atoms, purpose: Purpose) -> ChannelPlan:
    for site in sites:
        site.classes = atoms.roots(site.atoms)
    links = nx.Graph()
    for site in sites:
        roots = np.unique(site.classes).tolist()
        links.add_nodes_from(roots)
        if site.kind == "producer":
            links.add_edges_from(itertools.pairwise(roots))
    producer_roots = {int(c) for site in sites if site.kind == "producer" for c in site.classes}
    poisoned: dict[int, str] = {}
    for atom, reason in atoms.poison.items():
        poisoned.setdefault(atoms.find(atom), reason)
    component_of: dict[int, int] = {}
    components = [c for c in nx.connected_components(links) if c & producer_roots]
    components.sort(key=min)
    for index, members in enumerate(components):
        for root in members:
            component_of[root] = index
    grouped: list[list[Site]] = [[] for _ in components]
    for site in sites:
        owners = {component_of.get(int(c), -1) for c in site.classes} - {-1}
        for owner in owners:
            grouped[owner].append(site)
    groups = []
    for index, members in enumerate(components):
        groups.append(_make_group(index, members, grouped[index], poisoned))
    return ChannelPlan(purpose, groups)


def _make_group(index: int, members: set[int], sites: list[Site], poisoned: dict[int, str]) -> ChannelGroup:
    order: dict[int, int] = {}
    for site in sites:
        for c in site.classes.tolist():
            if c in members and c not in order:
                order[c] = len(order)
    classes = np.array(list(order), dtype=np.int64)
    size = len(classes)
    reasons = list(dict.fromkeys(poisoned[c] for c in classes.tolist() if c in poisoned))
    signature = np.zeros(size, dtype=np.uint64)
    for number, site in enumerate(sites):
        local = np.array([order.get(c, -1) for c in site.classes.tolist()], dtype=np.int64)
        mine = local[local >= 0]
        if len(np.unique(mine)) != len(mine):
            reasons.append(f"{site.describe()} reads one channel twice")
            continue
        signature[mine] = signature[mine] * np.uint64(1000003) + np.uint64(number + 1)
    blocks = [np.flatnonzero(signature == s) for s in dict.fromkeys(signature.tolist())]
    block_of = np.empty(size, dtype=np.int64)
    for number, block in enumerate(blocks):
        block_of[block] = number
    for site in sites:
        local = np.array([order.get(c, -1) for c in site.classes.tolist()], dtype=np.int64)
        mine = local[local >= 0]
        for number in np.unique(block_of[mine]).tolist():
            seen = mine[block_of[mine] == number]
            if np.any(np.diff(seen) < 0):
                reasons.append(f"{site.describe()} reads channels in another order")
                break
    return ChannelGroup(index, size, classes, sites, blocks, list(dict.fromkeys(reasons)))


# --- applying decisions ---------------------------------------------------------------------


def permute(model: ir.Model, plan: ChannelPlan, orders: Mapping[int, np.ndarray]) -> int:
    """Reorders the channels of groups; ``orders[g]`` lists group g's local classes in the new order.

    Within each block the classes take the order they have in ``orders[g]``; the function of the
    model is unchanged. Returns the number of tensors and attributes rewritten.

    Raises:
        UsageError: A refused group, or an order that is not a permutation of the group.
    """
    ranks: dict[int, int] = {}
    for index, order in orders.items():
        group = _usable(plan, index)
        order = np.asarray(order, dtype=np.int64)
        if sorted(order.tolist()) != list(range(group.size)):
            raise UsageError(f"order for channel group '{group.label}' is not a permutation of 0..{group.size - 1}")
        for rank, local in enumerate(order.tolist()):
            ranks[int(group.classes[local])] = rank
    blocks = _block_ids(plan, orders)
    return _rewrite(model, plan, orders, lambda classes: _permuted_positions(classes, ranks, blocks))


def remove(model: ir.Model, plan: ChannelPlan, keeps: Mapping[int, np.ndarray]) -> int:
    """Keeps only the given local classes of each group, removing the others everywhere.

    Returns the number of tensors and attributes rewritten.

    Raises:
        UsageError: A refused group, a plan not built for removal, a keep set that empties the
            group, or one that leaves a grouped Conv unbalanced.
    """
    if plan.purpose != "remove":
        raise UsageError("channel plan was built for 'permute'; analyze(model, 'remove') before removing")
    dropped: set[int] = set()
    for index, keep in keeps.items():
        group = _usable(plan, index)
        keep = np.asarray(keep, dtype=np.int64)
        if keep.size == 0 or keep.min() < 0 or keep.max() >= group.size:
            raise UsageError(f"channel group '{group.label}': keep at least one of its {group.size} channels")
        mask = np.ones(group.size, dtype=bool)
        mask[keep] = False
        dropped.update(group.classes[mask].tolist())
    return _rewrite(model, plan, keeps, lambda classes: np.flatnonzero(~np.isin(classes, list(dropped))))


def _usable(plan: ChannelPlan, index: int) -> ChannelGroup:
    if not 0 <= index < len(plan.groups):
        raise UsageError(f"no channel group {index}; the plan has {len(plan.groups)}")
    group = plan.groups[index]
    if not group.ok:
        raise UsageError(f"channel group '{group.label}' is refused: {group.reasons[0]}")
    return group


def _block_ids(plan: ChannelPlan, chosen: Mapping[int, Any]) -> dict[int, int]:
    ids: dict[int, int] = {}
    for index in chosen:
        group = plan.groups[index]
        for number, block in enumerate(group.blocks):
            for c in group.classes[block].tolist():
                ids[int(c)] = index * 1_000_000 + number
    return ids


def _permuted_positions(classes: np.ndarray, ranks: Mapping[int, int], blocks: Mapping[int, int]) -> np.ndarray:
    """Source position of each new channel position when blocks are refilled in rank order."""
    new = classes.copy()
    keyed = np.array([blocks.get(int(c), -1) for c in classes], dtype=np.int64)
    for block in np.unique(keyed[keyed >= 0]).tolist():
        slots = np.flatnonzero(keyed == block)
        rank = np.array([ranks[int(c)] for c in classes[slots]], dtype=np.int64)
        new[slots] = classes[slots][np.argsort(rank, kind="stable")]
    where = {int(c): p for p, c in enumerate(classes.tolist())}
    return np.array([where[int(c)] for c in new.tolist()], dtype=np.int64)


def _rewrite(model: ir.Model, plan: ChannelPlan, chosen: Mapping[int, Any], positions: Any) -> int:
    seen: set[int] = set()
    work: list[tuple[Site, np.ndarray]] = []
    for index in chosen:
        for site in plan.groups[index].sites:
            if id(site) in seen:
                continue
            seen.add(id(site))
            src = positions(site.classes)
            if plan.purpose == "permute" and np.array_equal(src, np.arange(len(site.classes))):
                continue
            _check(site, src)
            work.append((site, src))
    editor = _Editor(model, plan.purpose)
    for site, src in work:
        editor.apply(site, src)
    return editor.count


def set_constant_input(model: ir.Model, node: ir.Node, index: int, array: np.ndarray) -> None:
    """Feeds ``node`` a new constant at input ``index`` (added when missing); shared constants are copied."""
    if index >= len(node.inputs):
        node.resize_inputs(index + 1)
    editor = _Editor(model, "remove")
    if node.inputs[index] is None:
        from onnxshrink.graphs import fresh_name

        name = fresh_name(editor.taken, f"{node.name or node.op_type}_bias")
        value = ir.Value(
            name=name,
            const_value=ir.Tensor(array, name=name),
            type=ir.TensorType(ir.DataType.from_numpy(array.dtype)),
            shape=ir.Shape(array.shape),
        )
        model.graph.register_initializer(value)
        node.replace_input_with(index, value)
    else:
        editor.write(node, index, array)


def _check(site: Site, src: np.ndarray) -> None:
    """Fails before anything changes when the new channels cannot be written at ``site``."""
    groups = int(site.extra.get("groups", 1))
    per = len(site.atoms) // groups
    if groups > 1 and (len(src) % groups or np.any(np.bincount(src // per, minlength=groups) != len(src) // groups)):
        raise UsageError(f"{site.describe()}: a grouped Conv must keep the same number of channels in each group")
    if site.kind == "split":
        bounds = np.cumsum([0, *site.extra["sizes"]])
        if any(not np.any((src >= lo) & (src < hi)) for lo, hi in itertools.pairwise(bounds)):
            raise UsageError(f"{site.describe()}: removal would empty a Split output; keep a channel in each")
    if site.kind == "slice" and not np.any((src >= site.extra["start"]) & (src < site.extra["end"])):
        raise UsageError(f"{site.describe()}: removal would empty the slice; keep a channel in it")


def iter_ok(plan: ChannelPlan) -> Iterator[ChannelGroup]:
    """The groups of a plan that can be changed."""
    return (group for group in plan.groups if group.ok)


# --- the walk: one handler per op, in the order of CHANNEL_RULES.md ------------------------------

Dim = int | str | None

_UNARY = frozenset(
    (
        *("Relu", "LeakyRelu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Gelu", "Erf", "Elu", "Selu"),
        *("Celu", "Softplus", "Softsign", "Exp", "Log", "Abs", "Neg", "Sqrt", "Reciprocal", "Floor", "Ceil"),
        *("Round", "Sign", "Sin", "Cos", "Identity", "Dropout", "Cast", "Not", "Mish", "ThresholdedRelu"),
        *("IsNaN", "IsInf"),
    )
)
_ELEMENTWISE = frozenset(
    (
        *("Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "Where", "PRelu", "Mod"),
        *("Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "And", "Or", "Xor"),
    )
)
_POOLS = frozenset(("MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"))
_REDUCE = frozenset(
    (
        *("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2"),
        *("ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare"),
    )
)
# Reduce ops whose axes became an input at this opset (ReduceSum at 13, the others at 18).
_AXES_INPUT_SINCE = {"ReduceSum": 13}


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


def _inferred_shapes(model: ir.Model) -> dict[str, list[Dim]]:
    """Shapes by value name from onnx shape inference on a weightless copy (the model is untouched)."""
    import onnx

    from onnxshrink.checks import weightless_proto

    try:
        proto = onnx.shape_inference.infer_shapes(
            weightless_proto(model), check_type=False, strict_mode=False, data_prop=True
        )
    except Exception as error:  # inference gives up on some custom or malformed graphs
        logger.info("shape inference failed; channel analysis uses declared shapes only: %s", error)
        return {}
    shapes: dict[str, list[Dim]] = {}
    for info in [*proto.graph.value_info, *proto.graph.output, *proto.graph.input]:
        if not info.type.HasField("tensor_type") or not info.type.tensor_type.HasField("shape"):
            continue
        dims: list[Dim] = []
        for dim in info.type.tensor_type.shape.dim:
            if dim.HasField("dim_value"):
                dims.append(int(dim.dim_value))
            else:
                dims.append(dim.dim_param or None)
        shapes[info.name] = dims
    return shapes


class _Walker:
    """Propagates layouts through the main graph and records every site (see :class:`Site`)."""

    def __init__(self, model: ir.Model, purpose: Purpose, atoms: _Atoms) -> None:
        self.graph = model.graph
        self.opset = next((model.opset_imports[d] for d in _ONNX if d in model.opset_imports), 1)
        self.purpose = purpose
        self.atoms = atoms
        self.layouts: dict[ir.Value, Layout] = {}
        self.sites: list[Site] = []
        self.shapes = _inferred_shapes(model)

    # -- helpers --

    def run(self) -> None:
        for node in self.graph:
            ins = [self.layouts.get(v) if v is not None else None for v in node.inputs]
            if not any(ins) and node.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
                continue
            if node.domain not in _ONNX:
                self.kill_all(node, ins, f"custom op {node.domain}::{node.op_type} '{self.name(node)}'")
                continue
            handler = _HANDLERS.get(node.op_type)
            if handler is None:
                self.kill_all(node, ins, f"{node.op_type} '{self.name(node)}' has no channel rule")
                continue
            handler(self, node, ins)
        for value, layout in self.layouts.items():
            if value.is_graph_output():
                self.atoms.mark(layout.atoms, f"reaches graph output '{value.name}'")
            inner_use = next((n for n, _ in value.uses() if n.graph is not self.graph), None)
            if inner_use is not None:
                self.atoms.mark(layout.atoms, f"'{value.name}' is read inside a subgraph ({inner_use.op_type})")
            self.sites.append(Site("value", None, -1, layout.axis, layout.atoms, layout.inner, value=value))

    @staticmethod
    def name(node: ir.Node) -> str:
        return node.name or (node.outputs[0].name or node.op_type if node.outputs else node.op_type)

    def shape(self, value: ir.Value | None) -> list[Dim] | None:
        if value is None:
            return None
        array = _const(value)
        if array is not None:
            return list(array.shape)
        if value.shape is not None:
            dims: list[Dim] = [d if isinstance(d, int) else (d.value or None) for d in value.shape]
            if all(isinstance(d, int) for d in dims) or (value.name or "") not in self.shapes:
                return dims
        return self.shapes.get(value.name or "")

    def rank(self, value: ir.Value | None, layout: Layout | None) -> int | None:
        if layout is not None:
            return layout.rank
        shape = self.shape(value)
        return None if shape is None else len(shape)

    def kill(self, layout: Layout | None, reason: str) -> None:
        if layout is not None:
            self.atoms.mark(layout.atoms, reason)

    def kill_all(self, node: ir.Node, ins: list[Layout | None], reason: str) -> None:
        for layout in ins:
            self.kill(layout, reason)

    def out(self, node: ir.Node, layout: Layout, index: int = 0) -> None:
        if index < len(node.outputs):
            self.layouts[node.outputs[index]] = layout

    def site(
        self, kind: str, node: ir.Node, index: int, axis: int, atoms: np.ndarray, inner: int = 1, **extra: Any
    ) -> None:
        self.sites.append(Site(kind, node, index, axis, atoms, inner, extra=extra))

    def param(self, node: ir.Node, index: int, layout: Layout, out_rank: int, out_axis: int) -> bool:
        """Records a constant operand that broadcasts against the channel axis; False when it cannot."""
        array = _const(node.inputs[index])
        if array is None:
            return False
        aligned = out_axis - (out_rank - array.ndim)
        if aligned < 0 or array.shape[aligned] == 1:
            return True
        if array.shape[aligned] != len(layout.atoms) * layout.inner:
            return False
        self.site("param", node, index, aligned, layout.atoms, layout.inner)
        return True

    def producer(self, node: ir.Node, weight_axis: int, count: int, out_rank: int, bias: int | None) -> np.ndarray:
        """Mints atoms for a producer's output channels and records its weight and bias."""
        weight = node.inputs[1]
        reason = None
        if weight is not None and (weight.is_graph_input() or weight.is_graph_output()):
            reason = f"{node.op_type} '{self.name(node)}' weight '{weight.name}' is a graph input/output"
        atoms = self.atoms.new(count, reason)
        self.site("producer", node, 1, weight_axis, atoms)
        conv_like = node.op_type in ("Conv", "ConvTranspose")
        layout = Layout(1 if conv_like else out_rank - 1, out_rank, atoms)
        if bias is not None and bias < len(node.inputs) and node.inputs[bias] is not None:
            ok = self.bias(node, bias, layout) if conv_like else self.param(node, bias, layout, out_rank, 1)
            if not ok:
                self.atoms.mark(atoms, f"{node.op_type} '{self.name(node)}' bias is not a per-channel constant")
        self.out(node, layout)
        return atoms

    def bias(self, node: ir.Node, index: int, layout: Layout) -> bool:
        """Records a Conv-style ``[C]`` bias; False when it is not a constant of that shape."""
        array = _const(node.inputs[index])
        if array is None or array.shape != (len(layout.atoms),):
            return False
        self.site("param", node, index, 0, layout.atoms)
        return True


def _conv(w: _Walker, node: ir.Node, ins: list[Layout | None]) -> None:
    weight = _const(node.inputs[1] if len(node.inputs) > 1 else None)
    x = ins[0]
    if weight is None or weight.ndim < 3 or any(ins[1:]):
        w.kill_all(node, ins, f"Conv '{w.name(node)}' has no constant weight")
        return
    if x is not None and (x.axis != 1 or x.inner != 1):
        w.kill(x, f"Conv '{w.name(node)}' reads channels on axis {x.axis}")
        x = None
    groups = _attr_int(node, "group", 1)
    out_channels, per_group = weight.shape[0], weight.shape[1]
    if groups > 1 and per_group == 1 and out_channels == groups:  # depthwise: channel c in, c out
        if x is None:
            return
        w.site("param", node, 1, 0, x.atoms)
        if len(node.inputs) > 2 and node.inputs[2] is not None and not w.bias(node, 2, x):
            w.kill(x, f"Conv '{w.name(node)}' bias is not constant")
        w.site("depthwise", node, -1, 0, x.atoms)
        w.out(node, x)
        return
    if groups > 1 and per_group == 1:
        w.kill(x, f"depthwise Conv '{w.name(node)}' has channel multiplier {out_channels // groups}")
        return
    if x is not None:
        w.site("consumer", node, 1, 1, x.atoms, groups=groups)
        for part in np.split(x.atoms, groups) if groups > 1 else []:
            w.site("segment", node, -1, 1, part)
    first = len(w.sites)
    atoms = w.producer(node, 0, out_channels, weight.ndim, 2)
    if groups > 1:
        w.sites[first].extra["groups"] = groups
        for part in np.split(atoms, groups):
            w.site("segment", node, -1, 0, part)


def _conv_transpose(w: _Walker, node: ir.Node, ins: list[Layout | None]) -> None:
    weight = _const(node.inputs[1] if len(node.inputs) > 1 else None)
    x = ins[0]
    if weight is None or weight.ndim < 3 or any(ins[1:]) or _attr_int(node, "group", 1) != 1:
        w.kill_all(node, ins, f"ConvTranspose '{w.name(node)}' has no constant weight or has groups")
        return
    if x is not None:
        if x.axis != 1 or x.inner != 1:
            w.kill(x, f"ConvTranspose '{w.name(node)}' reads channels on axis {x.axis}")
        else:
            w.site("consumer", node, 1, 0, x.atoms)
    w.producer(node, 1, weight.shape[1], weight.ndim, 2)


def _gemm(w: _Walker, node: ir.Node, ins: list[Layout | None]) -> None:
    weight = _const(node.inputs[1])
    x = ins[0]
    if weight is None or weight.ndim != 2 or any(ins[1:]):
        w.kill_all(node, ins, f"Gemm '{w.name(node)}' has no constant weight")
        return
    trans_a, trans_b = _attr_int(node, "transA", 0), _attr_int(node, "transB", 0)
    k_axis = 1 if trans_b else 0
    if x is not None:
        if x.rank == 2 and x.axis == (0 if trans_a else 1) and len(x.atoms) * x.inner == weight.shape[k_axis]:
            w.site("consumer", node, 1, k_axis, x.atoms, x.inner)
        else:
            w.kill(x, f"Gemm '{w.name(node)}' reads channels on a non-reduction axis")
    w.producer(node, 1 - k_axis, weight.shape[1 - k_axis], 2, 2)


def _matmul(w: _Walker, node: ir.Node, ins: list[Layout | None]) -> None:
    weight = _const(node.inputs[1])
    x = ins[0]
    if weight is None or weight.ndim != 2 or ins[1] is not None:
        w.kill_all(node, ins, f"MatMul '{w.name(node)}' multiplies two activations")
        return
    if x is not None:
        if x.axis == x.rank - 1 and len(x.atoms) * x.inner == weight.shape[0]:
            w.site("consumer", node, 1, 0, x.atoms, x.inner)
        else:
            w.kill(x, f"MatMul '{w.name(node)}' reads channels on a non-reduction axis")
    rank = w.rank(node.inputs[0], x)
    if rank is None or rank < 2:
        return  # no known output rank: its channels are not tracked (nothing reads them as a group)
    w.producer(node, 1, weight.shape[1], rank, None)


def _unary(w: _Walker, node: ir.Node, ins: list[Layout | None]) -> None:
    x = ins[0]
    if x is None or any(ins[1:]):
        w.kill_all(node, ins, f"{node.op_type} '{w.name(node)}' mixes channels")
        return
    for index in range(len(node.outputs)):
        w.out(node, x, index)


def _clip(w: _Walker, node: ir.Node, ins: list[Layout | None]) -> None:
    for bound in node.inputs[1:]:
        shape = w.shape(bound) if bound is not None else []
        if shape is None or any(d != 1 for d in shape):
            w.kill_all(node, ins, f"Clip '{w.name(node)}' has non-scalar bounds")
            return
    _unary(w, node, ins)


def _elementwise(w: _Walker, node: ir.Node, ins: list[Layout | None]) -> None:
    where = f"{node.op_type} '{w.name(node)}'"
    ranks = [w.rank(v, layout) for v, layout in zip(node.inputs, ins, strict=True)]
    if any(r is None for r in ranks):
        w.kill_all(node, ins, f"{where} has an input of unknown rank")
        return
    out_rank = max(r for r in ranks if r is not None)
    carried = [(layout.axis + out_rank - layout.rank, layout) for layout in ins if layout is not None]
    widest = max(len(other.atoms) * other.inner for _, other in carried)
    if widest > 1:  # a one-channel activation (a spatial gate) broadcasts; it is not coupled
        for _, other in carried:
            if len(other.atoms) * other.inner == 1:
                w.kill(other, f"{where} broadcasts a single channel over {widest}")
        carried = [(axis, other) for axis, other in carried if len(other.atoms) * other.inner > 1]
    out_axis, first = carried[0]
    if any(
        axis != out_axis or other.inner != first.inner or len(other.atoms) != len(first.atoms)
        for axis, other in carried
    ):
        w.kill_all(node, ins, f"{where} combines channels on different axes")
        return
    for index, (value, layout) in enumerate(zip(node.inputs, ins, strict=True)):
        if layout is not None or value is None:
            continue
        if _const(value) is not None:
            if not w.param(node, index, first, out_rank, out_axis):
                w.kill_all(node, ins, f"{where} constant '{value.name}' does not broadcast per channel")
                return
            continue
        shape = w.shape(value)
        aligned = out_axis - (out_rank - len(shape)) if shape is not None else None
        if shape is None or aligned is None or (aligned >= 0 and shape[aligned] != 1):
            w.kill_all(node, ins, f"{where} couples channels with '{value.name}', which no prunable layer makes")
            return
    for _, other in carried[1:]:
        w.atoms.union(first.atoms, other.atoms)
    w.out(node, Layout(out_axis, out_rank, first.atoms, first.inner))


def _batch_norm(w: _Walker, node: ir.Node, ins: list[Layout | None]) -> None:
    x = ins[0]
    where = f"{node.op_type} '{w.name(node)}'"
    extra_outputs = any(o.uses() or o.is_graph_output() for o in node.outputs[1:])
    if x is None or x.axis != 1 or x.inner != 1 or any(ins[1:]) or _attr_int(node, "training_mode", 0) or extra_outputs:
        w.kill_all(node, ins, f"{where} is not an inference normalization over axis 1")
        return
    for index in range(1, len(node.inputs)):
        array = _const(node.inputs[index])
        if array is None or array.shape != (len(x.atoms),):
            w.kill(x, f"{where} parameter {index} is not a constant per channel")
            return
        w.site("param", node, index, 0, x.atoms)
    w.out(node, x)


def _pool(w: _Walker, node: ir.Node, ins: list[Layout | None]) -> None:
    x = ins[0]
    if x is None or x.axis != 1 or x.inner != 1 or any(o.uses() or o.is_graph_output() for o in node.outputs[1:]):
        w.kill_all(node, ins, f"{node.op_type} '{w.name(node)}' pools over channels or returns indices")
        return
    w.out(node, x)


def _resize(w: _Walker, node: ir.Node, ins: list[Layout | None]) -> None:
    x = ins[0]
    where = f"{node.op_type} '{w.name(node)}'"
    if x is None or any(ins[1:]):
        w.kill_all(node, ins, f"{where} resizes by an activation")
        return
    scale_index = 1 if node.op_type == "Upsample" or w.opset < 11 else 2
    scales = _const(node.inputs[scale_index]) if scale_index < len(node.inputs) else None
    sizes = _ints(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3] is not None else None
    if scales is not None and scales.size:
        if scales.size != x.rank or float(scales.reshape(-1)[x.axis]) != 1.0:
            w.kill(x, f"{where} scales the channel axis")
            return
    elif sizes is not None:
        if w.purpose == "remove":
            w.kill(x, f"{where} sizes constant carries the channel count")
            return
    elif _attr_ints(node, "scales") is None:
        w.kill(x, f"{where} has no constant scales or sizes")
        return
    w.out(node, x)


def _pad(w: _Walker, node: ir.Node, ins: list[Layout | None]) -> None:
    x = ins[0]
    where = f"Pad '{w.name(node)}'"
    if x is None or any(ins[1:]):
        w.kill_all(node, ins, f"{where} pads by an activation")
        return
    pads = _attr_ints(node, "pads") if w.opset < 11 else _ints(node.inputs[1] if len(node.inputs) > 1 else None)
    axes = _ints(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3] is not None else list(range(x.rank))
    if pads is None or axes is None:
        w.kill(x, f"{where} has non-constant pads")
        return
    axes = [a % x.rank for a in axes]
    if x.axis in axes:
        i = axes.index(x.axis)
        if pads[i] or pads[i + len(axes)]:
            w.kill(x, f"{where} pads the channel axis")
            return
    w.out(node, x)


def _transpose(w: _Walker, node: ir.Node, ins: list[Layout | None]) -> None:
    x = ins[0]
    assert x is not None
    perm = _attr_ints(node, "perm") or list(range(x.rank))[::-1]
    w.out(node, Layout(perm.index(x.axis), x.rank, x.atoms, x.inner))


def _axes(w: _Walker, node: ir.Node, since: int) -> list[int] | None:
    if w.opset >= since:
        return _ints(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] is not None else None
    return _attr_ints(node, "axes")


def _squeeze(w: _Walker, node: ir.Node, ins: list[Layout | None]) -> None:
    x = ins[0]
    assert x is not None
    axes = _axes(w, node, 13)
    if axes is None:
        shape = w.shape(node.inputs[0])
        axes = [i for i, d in enumerate(shape) if d == 1] if shape is not None else None
    if axes is None or any(ins[1:]):
        w.kill(x, f"Squeeze '{w.name(node)}' has unknown axes")
        return
    axes = [a % x.rank for a in axes]
    if x.axis in axes:
        w.kill(x, f"Squeeze '{w.name(node)}' removes the channel axis")
        return
    w.out(node, Layout(x.axis - sum(a < x.axis for a in axes), x.rank - len(axes), x.atoms, x.inner))


def _unsqueeze(w: _Walker, node: ir.Node, ins: list[Layout | None]) -> None:
    x = ins[0]
    assert x is not None
    axes = _axes(w, node, 13)
    if axes is None or any(ins[1:]):
        w.kill(x, f"Unsqueeze '{w.name(node)}' has unknown axes")
        return
    rank = x.rank + len(axes)
    new_axes = {a % rank for a in axes}
    kept = [i for i in range(rank) if i not in new_axes]
    w.out(node, Layout(kept[x.axis], rank, x.atoms, x.inner))


def _flatten(w: _Walker, node: ir.Node, ins: list[Layout | None]) -> None:
    x = ins[0]
    assert x is not None
    start = _attr_int(node, "axis", 1) % x.rank if x.rank else 0
    shape = w.shape(node.inputs[0])
    where = f"Flatten '{w.name(node)}'"
    if shape is None or x.axis < start or any(d != 1 for d in shape[start : x.axis]):
        w.kill(x, f"{where} does not keep the channels outermost")
        return
    after = shape[x.axis + 1 :]
    if not all(isinstance(d, int) for d in after):
        w.kill(x, f"{where} flattens dims of unknown size")
        return
    inner = x.inner * int(np.prod([int(d) for d in after if isinstance(d, int)], dtype=np.int64))
    w.out(node, Layout(1, 2, x.atoms, inner))


def _reshape(w: _Walker, node: ir.Node, ins: list[Layout | None]) -> None:
    x = ins[0]
    assert x is not None
    where = f"Reshape '{w.name(node)}'"
    target = _ints(node.inputs[1]) if not any(ins[1:]) else None
    in_shape, out_shape = w.shape(node.inputs[0]), w.shape(node.outputs[0])
    if target is None or in_shape is None or out_shape is None or len(in_shape) != x.rank:
        w.kill(x, f"{where} has a non-constant target or unknown shapes")
        return
    a = x.axis
    count = len(x.atoms) * x.inner
    if len(out_shape) > a and out_shape[: a + 1] == in_shape[: a + 1] and in_shape[a] == count:
        layout = Layout(a, len(out_shape), x.atoms, x.inner)
    elif (
        len(out_shape) == a + 1
        and out_shape[:a] == in_shape[:a]
        and all(isinstance(d, int) for d in in_shape[a + 1 :])
        and in_shape[a] == count
    ):
        layout = Layout(
            a, a + 1, x.atoms, x.inner * int(np.prod([int(d) for d in in_shape[a + 1 :] if isinstance(d, int)]))
        )
    else:
        w.kill(x, f"{where} splits or moves the channel axis")
        return
    w.site("reshape", node, 1, a, layout.atoms, layout.inner, entry=target[a])
    w.out(node, layout)


def _concat(w: _Walker, node: ir.Node, ins: list[Layout | None]) -> None:
    carried = [layout for layout in ins if layout is not None]
    rank = carried[0].rank
    axis = _attr_int(node, "axis", 0) % rank
    where = f"Concat '{w.name(node)}'"
    if any(layout.rank != rank or layout.inner != 1 or layout.axis != carried[0].axis for layout in carried):
        w.kill_all(node, ins, f"{where} joins channels on different axes")
        return
    if carried[0].axis == axis:
        parts = []
        for value, layout in zip(node.inputs, ins, strict=True):
            if layout is not None:
                parts.append(layout.atoms)
                continue
            shape = w.shape(value)
            size = shape[axis] if shape is not None else None
            if not isinstance(size, int):
                w.kill_all(node, ins, f"{where} input '{value.name if value else '?'}' has an unknown channel count")
                return
            parts.append(
                w.atoms.new(size, f"{where} input '{value.name if value else '?'}' is no prunable layer's output")
            )
        w.out(node, Layout(axis, rank, np.concatenate(parts)))
        return
    for index, (value, layout) in enumerate(zip(node.inputs, ins, strict=True)):
        if layout is None and not w.param(node, index, carried[0], rank, carried[0].axis):
            w.kill_all(node, ins, f"{where} joins channels with '{value.name if value else '?'}', which no layer makes")
            return
    for layout in carried[1:]:
        w.atoms.union(carried[0].atoms, layout.atoms)
    w.out(node, carried[0])


def _split(w: _Walker, node: ir.Node, ins: list[Layout | None]) -> None:
    x = ins[0]
    assert x is not None
    axis = _attr_int(node, "axis", 0) % x.rank
    if axis != x.axis:
        for index in range(len(node.outputs)):
            w.out(node, x, index)
        return
    where = f"Split '{w.name(node)}'"
    count = len(x.atoms)
    if w.opset >= 13:
        sizes = _ints(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] is not None else None
        explicit = sizes is not None or (len(node.inputs) > 1 and node.inputs[1] is not None)
    else:
        sizes = _attr_ints(node, "split")
        explicit = sizes is not None
    if sizes is None and not explicit:
        parts = len(node.outputs)
        step = -(-count // parts)
        sizes = [min(step, count - i * step) for i in range(parts)]
    if sizes is None or sum(sizes) != count or x.inner != 1 or any(ins[1:]):
        w.kill(x, f"{where} has unknown split sizes")
        return
    w.site("split", node, 1, x.axis, x.atoms, sizes=sizes)
    bounds = np.cumsum([0, *sizes])
    for index in range(len(node.outputs)):
        part = x.atoms[bounds[index] : bounds[index + 1]]
        w.out(node, Layout(x.axis, x.rank, part), index)


def _slice(w: _Walker, node: ir.Node, ins: list[Layout | None]) -> None:
    x = ins[0]
    assert x is not None
    where = f"Slice '{w.name(node)}'"
    if w.opset < 10:
        starts, ends, axes = (_attr_ints(node, key) for key in ("starts", "ends", "axes"))
        steps = None
    else:
        starts, ends, axes, steps = (
            _ints(node.inputs[i]) if len(node.inputs) > i and node.inputs[i] is not None else None for i in (1, 2, 3, 4)
        )
    if starts is None or ends is None or any(ins[1:]):
        w.kill(x, f"{where} has non-constant bounds")
        return
    axes = [a % x.rank for a in (axes if axes is not None else range(len(starts)))]
    if x.axis not in axes:
        w.out(node, x)
        return
    entry = axes.index(x.axis)
    if (steps is not None and steps[entry] != 1) or x.inner != 1:
        w.kill(x, f"{where} steps over channels")
        return
    count = len(x.atoms)
    start, end = (int(np.clip(v + count if v < 0 else v, 0, count)) for v in (starts[entry], ends[entry]))
    if end <= start:
        w.kill(x, f"{where} keeps no channel")
        return
    w.site("slice", node, -1, x.axis, x.atoms, entry=entry, start=start, end=end, attrs=w.opset < 10)
    w.out(node, Layout(x.axis, x.rank, x.atoms[start:end]))


def _reduce(w: _Walker, node: ir.Node, ins: list[Layout | None]) -> None:
    x = ins[0]
    assert x is not None
    axes = _axes(w, node, _AXES_INPUT_SINCE.get(node.op_type, 18))
    keep = _attr_int(node, "keepdims", 1)
    if not axes:
        axes = [] if _attr_int(node, "noop_with_empty_axes", 0) else list(range(x.rank))
    axes = [a % x.rank for a in axes]
    if x.axis in axes or any(ins[1:]):
        if w.purpose == "remove" or any(ins[1:]) or node.op_type.startswith("Arg"):
            w.kill(x, f"{node.op_type} '{w.name(node)}' reduces over the channel axis (lossy)")
        return
    if keep:
        w.out(node, x)
    else:
        w.out(node, Layout(x.axis - sum(a < x.axis for a in axes), x.rank - len(axes), x.atoms, x.inner))


def _arg(w: _Walker, node: ir.Node, ins: list[Layout | None]) -> None:
    x = ins[0]
    assert x is not None
    axis = _attr_int(node, "axis", 0) % x.rank
    if axis == x.axis:
        w.kill(x, f"{node.op_type} '{w.name(node)}' returns channel indices")
        return
    keep = _attr_int(node, "keepdims", 1)
    w.out(node, x if keep else Layout(x.axis - (axis < x.axis), x.rank - 1, x.atoms, x.inner))


def _softmax(w: _Walker, node: ir.Node, ins: list[Layout | None]) -> None:
    x = ins[0]
    assert x is not None
    axis = _attr_int(node, "axis", 1 if w.opset < 13 else -1) % x.rank
    covered = x.axis >= axis if w.opset < 13 else x.axis == axis
    if covered and (w.purpose == "remove" or node.op_type == "Hardmax"):
        w.kill(x, f"{node.op_type} '{w.name(node)}' normalizes over the channel axis (lossy)")
        return
    w.out(node, x)


def _layer_norm(w: _Walker, node: ir.Node, ins: list[Layout | None]) -> None:
    x = ins[0]
    where = f"LayerNormalization '{w.name(node)}'"
    if x is None or any(ins[1:]) or any(o.uses() or o.is_graph_output() for o in node.outputs[1:]):
        w.kill_all(node, ins, f"{where} is normalized by an activation")
        return
    axis = _attr_int(node, "axis", -1) % x.rank
    if x.axis < axis:
        w.out(node, x)
        return
    if w.purpose == "remove" or axis != x.rank - 1 or x.axis != axis:
        w.kill(x, f"{where} normalizes over the channel axis (lossy)")
        return
    for index in range(1, len(node.inputs)):
        if node.inputs[index] is not None and not w.param(node, index, x, x.rank, x.axis):
            w.kill(x, f"{where} parameter {index} is not constant")
            return
    w.out(node, x)


def _quantize(w: _Walker, node: ir.Node, ins: list[Layout | None]) -> None:
    x = ins[0]
    where = f"{node.op_type} '{w.name(node)}'"
    scale = _const(node.inputs[1]) if len(node.inputs) > 1 else None
    if x is None or any(ins[1:]) or scale is None:
        w.kill_all(node, ins, f"{where} has non-constant scales")
        return
    if scale.size > 1:
        if _attr_int(node, "axis", 1) % x.rank != x.axis or scale.shape != (len(x.atoms) * x.inner,):
            w.kill(x, f"{where} quantizes per channel on another axis")
            return
        for index in range(1, len(node.inputs)):
            if node.inputs[index] is not None:
                w.site("param", node, index, 0, x.atoms, x.inner)
    w.out(node, x)


def _shape_of(w: _Walker, node: ir.Node, ins: list[Layout | None]) -> None:
    if w.purpose == "remove":
        w.kill_all(node, ins, f"{node.op_type} '{w.name(node)}' reads the channel count")


_HANDLERS: dict[str, Any] = {
    "Conv": _conv,
    "ConvTranspose": _conv_transpose,
    "Gemm": _gemm,
    "MatMul": _matmul,
    "BatchNormalization": _batch_norm,
    "InstanceNormalization": _batch_norm,
    "Clip": _clip,
    "Resize": _resize,
    "Upsample": _resize,
    "Pad": _pad,
    "Transpose": _transpose,
    "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze,
    "Flatten": _flatten,
    "Reshape": _reshape,
    "Concat": _concat,
    "Split": _split,
    "Slice": _slice,
    "ArgMax": _arg,
    "ArgMin": _arg,
    "Softmax": _softmax,
    "LogSoftmax": _softmax,
    "Hardmax": _softmax,
    "LayerNormalization": _layer_norm,
    "QuantizeLinear": _quantize,
    "DequantizeLinear": _quantize,
    "Shape": _shape_of,
    "Size": _shape_of,
    **dict.fromkeys(_UNARY, _unary),
    **dict.fromkeys(_ELEMENTWISE, _elementwise),
    **dict.fromkeys(_POOLS, _pool),
    **dict.fromkeys(_REDUCE, _reduce),
}


# --- rewriting the graph ----------------------------------------------------------------------


def _expand(src: np.ndarray, inner: int) -> np.ndarray:
    """Channel positions to element positions along an axis where each channel spans ``inner``."""
    if inner == 1:
        return src
    return (src[:, None] * inner + np.arange(inner)[None, :]).reshape(-1)


class _Editor:
    """Applies one site's new channel positions to the graph, copy-on-write for shared constants."""

    def __init__(self, model: ir.Model, purpose: Purpose) -> None:
        self.graph = model.graph
        self.opset = next((model.opset_imports[d] for d in _ONNX if d in model.opset_imports), 1)
        self.purpose = purpose
        self.count = 0
        self.taken = {v.name for v in [*self.graph.inputs, *self.graph.initializers.values()] if v.name}
        self.taken.update(
            o.name for node in ir.traversal.RecursiveGraphIterator(self.graph) for o in node.outputs if o.name
        )

    def apply(self, site: Site, src: np.ndarray) -> None:
        if site.kind in ("producer", "param", "consumer"):
            self.tensor(site, src)
        elif self.purpose == "permute" or site.kind == "segment":
            return
        elif site.kind == "split":
            self.split(site, src)
        elif site.kind == "slice":
            self.slice(site, src)
        elif site.kind == "reshape":
            self.reshape(site, src)
        elif site.kind == "depthwise":
            assert site.node is not None
            site.node.attributes["group"] = ir.AttrInt64("group", len(src))
            self.count += 1
        elif site.kind == "value":
            self.value_shape(site, src)

    def tensor(self, site: Site, src: np.ndarray) -> None:
        node = site.node
        assert node is not None
        array = _const(node.inputs[site.index])
        assert array is not None, site.describe()
        groups = int(site.extra.get("groups", 1))
        per = len(site.atoms) // groups
        if site.kind == "consumer" and groups > 1:
            rows, keep = array.shape[0] // groups, len(src) // groups
            pieces = [
                array[g * rows : (g + 1) * rows][:, src[g * keep : (g + 1) * keep] - g * per] for g in range(groups)
            ]
            new = np.concatenate(pieces, axis=0)
        else:
            new = np.take(array, _expand(src, site.inner), axis=site.axis)
        self.write(node, site.index, new)

    def write(self, node: ir.Node, index: int, array: np.ndarray) -> None:
        old = node.inputs[index]
        assert old is not None
        private = (
            old.is_initializer()
            and old.graph is self.graph
            and len(old.uses()) == 1
            and not old.is_graph_output()
            and not old.is_graph_input()
        )
        if private:
            doc = old.const_value.doc_string if old.const_value is not None else None
            old.const_value = ir.Tensor(array, name=old.name, doc_string=doc)
            old.shape = ir.Shape(array.shape)
        else:
            from onnxshrink.graphs import fresh_name

            name = fresh_name(self.taken, old.name or "channels")
            new = ir.Value(
                name=name,
                const_value=ir.Tensor(array, name=name),
                type=ir.TensorType(ir.DataType.from_numpy(array.dtype)),
                shape=ir.Shape(array.shape),
            )
            self.graph.register_initializer(new)
            node.replace_input_with(index, new)
            self.release(old)
        self.count += 1

    def release(self, value: ir.Value) -> None:
        if value.uses() or value.is_graph_output() or value.is_graph_input():
            return
        producer = value.producer()
        if producer is not None and producer.op_type == "Constant" and producer.graph is self.graph:
            self.graph.remove(producer, safe=True)
        elif value.is_initializer() and value.graph is self.graph and value.name:
            self.graph.initializers.pop(value.name)

    def split(self, site: Site, src: np.ndarray) -> None:
        node = site.node
        assert node is not None
        bounds = np.cumsum([0, *site.extra["sizes"]])
        sizes = [int(np.count_nonzero((src >= lo) & (src < hi))) for lo, hi in itertools.pairwise(bounds)]
        if self.opset >= 13:
            if len(node.inputs) < 2:
                node.resize_inputs(2)
            if node.inputs[1] is None:
                from onnxshrink.graphs import fresh_name

                name = fresh_name(self.taken, f"{node.name or 'split'}_sizes")
                value = ir.Value(name=name, const_value=ir.Tensor(np.array(sizes, dtype=np.int64), name=name))
                value.type, value.shape = ir.TensorType(ir.DataType.INT64), ir.Shape([len(sizes)])
                self.graph.register_initializer(value)
                node.replace_input_with(1, value)
            else:
                self.write(node, 1, np.array(sizes, dtype=np.int64))
            node.attributes.pop("num_outputs", None)
        else:
            node.attributes["split"] = ir.AttrInt64s("split", sizes)
        self.count += 1

    def slice(self, site: Site, src: np.ndarray) -> None:
        node = site.node
        assert node is not None
        start, end, entry = site.extra["start"], site.extra["end"], site.extra["entry"]
        new_start = int(np.count_nonzero(src < start))
        new_end = new_start + int(np.count_nonzero((src >= start) & (src < end)))
        for index, key, bound in ((1, "starts", new_start), (2, "ends", new_end)):
            if site.extra["attrs"]:
                values = _attr_ints(node, key) or []
                values[entry] = bound
                node.attributes[key] = ir.AttrInt64s(key, values)
            else:
                array = _const(node.inputs[index])
                assert array is not None
                array = array.copy()
                array.reshape(-1)[entry] = bound
                self.write(node, index, array)
        self.count += 1

    def reshape(self, site: Site, src: np.ndarray) -> None:
        node = site.node
        assert node is not None
        if site.extra["entry"] <= 0:
            return
        array = _const(node.inputs[1])
        assert array is not None
        array = array.copy()
        array[site.axis] = len(src) * site.inner
        self.write(node, 1, array)

    def value_shape(self, site: Site, src: np.ndarray) -> None:
        value = site.value
        if value is None or value.shape is None or site.axis >= len(value.shape):
            return
        dims = list(value.shape)
        if isinstance(dims[site.axis], int):
            dims[site.axis] = len(src) * site.inner
            value.shape = ir.Shape(dims)
