"""Applying channel decisions to the graph: permutations and removals, site by site, copy-on-write."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping

import numpy as np
import onnx_ir as ir

from onnxshrink.errors import UsageError
from onnxshrink.ir.constants import constant_array
from onnxshrink.ir.graphs import add_initializer, opset_version, taken_names
from onnxshrink.passes.channels.groups import ChannelGroup, ChannelPlan
from onnxshrink.passes.channels.types import Purpose, Site


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


def _block_ids(plan: ChannelPlan, chosen: Mapping[int, np.ndarray]) -> dict[int, int]:
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


def _rewrite(
    model: ir.Model, plan: ChannelPlan, chosen: Mapping[int, np.ndarray], positions: Callable[[np.ndarray], np.ndarray]
) -> int:
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
        value = add_initializer(model.graph, editor.taken, f"{node.name or node.op_type}_bias", array)
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


def _expand(src: np.ndarray, inner: int) -> np.ndarray:
    """Channel positions to element positions along an axis where each channel spans ``inner``."""
    if inner == 1:
        return src
    return (src[:, None] * inner + np.arange(inner)[None, :]).reshape(-1)


class _Editor:
    """Applies one site's new channel positions to the graph, copy-on-write for shared constants."""

    def __init__(self, model: ir.Model, purpose: Purpose) -> None:
        self.graph = model.graph
        self.opset = opset_version(model)
        self.purpose = purpose
        self.count = 0
        self.taken = taken_names(model)

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
        array = site.constant()
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
            new = add_initializer(self.graph, self.taken, old.name or "channels", array)
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
                base = f"{node.name or 'split'}_sizes"
                value = add_initializer(self.graph, self.taken, base, np.array(sizes, dtype=np.int64))
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
                values = list(node.attributes.get_ints(key, []))
                values[entry] = bound
                node.attributes[key] = ir.AttrInt64s(key, values)
            else:
                array = constant_array(node.inputs[index])
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
        array = constant_array(node.inputs[1])
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
