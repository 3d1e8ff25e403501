"""Per-op behaviour as a table: entries registered by (domain, op type, opset range), looked up by node.

Every per-op rule set in onnxshrink is an :class:`OpTable`: folding evaluators, shape-arithmetic
rules, dimension classes, cleanup's algebraic rules and the channel-propagation rules. One table
holds one kind of entry (a function, usually); a key may hold several entries, which are returned
in registration order so a caller can try them one after another::

    EVALUATORS: OpTable[Evaluator] = OpTable("fold evaluators")

    @EVALUATORS.register("Add", "Sub")
    def _binary(node, arrays): ...

    evaluator = EVALUATORS.lookup(node, opset)

The domains ``""`` and ``"ai.onnx"`` name the same operator set and share their entries.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

import onnx_ir as ir

from onnxshrink.ir.graphs import canonical_domain

EntryT = TypeVar("EntryT")


@dataclasses.dataclass(frozen=True)
class OpEntry(Generic[EntryT]):
    """One registered entry and the opset versions of its domain it applies to (both ends included)."""

    domain: str
    op_type: str
    entry: EntryT
    since: int = 1
    until: int | None = None

    def applies_to(self, opset: int | None) -> bool:
        """True when the entry covers ``opset`` (``None``: the version is not known, any entry applies)."""
        if opset is None:
            return True
        return self.since <= opset and (self.until is None or opset <= self.until)


class OpTable(Generic[EntryT]):
    """A table of per-op entries keyed by (domain, op type) with an opset range each.

    Args:
        name: What the table holds (``fold evaluators``), for messages and ``repr``.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._entries: dict[tuple[str, str], list[OpEntry[EntryT]]] = {}

    def __repr__(self) -> str:
        return f"OpTable({self.name!r}, {len(self._entries)} op types)"

    def add(self, op_type: str, entry: EntryT, *, domain: str = "", since: int = 1, until: int | None = None) -> None:
        """Adds ``entry`` for ``op_type`` in ``domain`` from opset ``since`` to ``until`` (None: no end)."""
        if until is not None and until < since:
            raise ValueError(f"{self.name}: {op_type} registered for opsets {since}..{until}, an empty range")
        key = (canonical_domain(domain), op_type)
        self._entries.setdefault(key, []).append(OpEntry(key[0], op_type, entry, since, until))

    def register(
        self, *op_types: str, domain: str = "", since: int = 1, until: int | None = None
    ) -> Callable[[EntryT], EntryT]:
        """Decorator form of :meth:`add` for each of ``op_types``; returns the entry unchanged."""

        def decorate(entry: EntryT) -> EntryT:
            for op_type in op_types:
                self.add(op_type, entry, domain=domain, since=since, until=until)
            return entry

        return decorate

    def entries(self, node: ir.Node) -> list[OpEntry[EntryT]]:
        """Every entry registered for the node's op, whatever their opset ranges, in registration order."""
        return list(self._entries.get((canonical_domain(node.domain), node.op_type), ()))

    def lookup_all(self, node: ir.Node, opset: int | None) -> list[EntryT]:
        """The entries for the node's op that cover ``opset``, in registration order."""
        return [e.entry for e in self.entries(node) if e.applies_to(opset)]

    def lookup(self, node: ir.Node, opset: int | None) -> EntryT | None:
        """The first entry for the node's op that covers ``opset``, or None."""
        found = self.lookup_all(node, opset)
        return found[0] if found else None

    def __contains__(self, key: tuple[str, str]) -> bool:
        """``(domain, op_type) in table``: whether any entry is registered for that op."""
        domain, op_type = key
        return (canonical_domain(domain), op_type) in self._entries

    def op_types(self, domain: str = "") -> Iterator[str]:
        """The op types of ``domain`` that have entries, sorted."""
        wanted = canonical_domain(domain)
        yield from sorted(op for d, op in self._entries if d == wanted)
