"""Data passes that run only the part of a model not run yet (``reconstruct``'s stages).

``reconstruct`` streams the calibration data once per stage; stage ``k`` needs the values at its
layers, which depend only on the layers of stages before ``k``. Everything upstream of them has
not changed since the pass that computed it, so after the first pass (the whole model, as
:func:`~onnxshrink.activations.capture` runs it) each pass runs only a segment of the graph: the
nodes that the values it wants need and no earlier pass ran, extracted as a model of its own whose
inputs are the boundary values (those computed before and read by a node not run yet, or wanted
by a later pass; graph inputs still read later included; values read by If/Loop/Scan bodies count
as read). Every pass's segment is extracted from the model as it is then, refit weights included.
Over all passes the model runs about once, not once per pass.

The boundary values of every calibration batch are kept between passes, in memory up to
``IN_MEMORY`` bytes per model, beyond that as ``.npy`` files in a temporary directory read back
memory-mapped. A boundary value that is not a tensor (a sequence, an optional) or a segment that
cannot be extracted turns the remaining passes into whole-model runs, and :attr:`ChainedCapture.whole_runs`
says why.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx_ir as ir

from onnxshrink.activations import capture
from onnxshrink.context import PassContext
from onnxshrink.runtime import RuntimeUnavailable, run

# Boundary bytes per model kept in memory; the rest goes to disk.
IN_MEMORY = 1 << 30
# False: every data pass runs the whole model (what a graph that cannot be cut gets).
SEGMENTS = True

Augment = Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]


class _Store:
    """The boundary values of each calibration batch, spilled to ``.npy`` files past ``limit`` bytes."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.batches: list[dict[str, np.ndarray]] = []
        self.in_memory = 0
        self.spilled: dict[tuple[int, str], Path] = {}
        self.spilled_bytes = 0  # written to disk so far
        self.files = 0
        self.directory: Path | None = None

    def put(self, batch: int, name: str, array: np.ndarray) -> None:
        while len(self.batches) <= batch:
            self.batches.append({})
        if self.in_memory + array.nbytes <= self.limit:
            self.in_memory += array.nbytes
            self.batches[batch][name] = array
            return
        if self.directory is None:
            self.directory = Path(tempfile.mkdtemp(prefix="onnxshrink-reconstruct-"))
        self.files += 1
        path = self.directory / f"{self.files}.npy"
        np.save(path, np.ascontiguousarray(array))
        self.spilled_bytes += array.nbytes
        self.spilled[batch, name] = path
        self.batches[batch][name] = np.load(path, mmap_mode="r")

    def keep(self, batch: int, names: set[str]) -> None:
        """Forgets the batch's values not in ``names`` (their files too)."""
        held = self.batches[batch]
        for name in [n for n in held if n not in names]:
            array = held.pop(name)
            path = self.spilled.pop((batch, name), None)
            if path is None:
                self.in_memory -= array.nbytes
            else:
                path.unlink()

    @property
    def nbytes(self) -> int:
        """Bytes held, in memory and on disk."""
        return sum(array.nbytes for batch in self.batches for array in batch.values())

    def close(self) -> None:
        self.batches = []
        self.in_memory = 0
        self.spilled = {}
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None


def reads(node: ir.Node, graph: ir.Graph) -> set[str]:
    """Names of the ``graph`` values the node reads: its inputs and what its subgraphs read from outside."""
    names = {v.name for v in node.inputs if v is not None and v.name}
    for attribute in node.attributes.values():
        if attribute.type == ir.AttributeType.GRAPH:
            bodies = [attribute.as_graph()]
        elif attribute.type == ir.AttributeType.GRAPHS:
            bodies = list(attribute.as_graphs())
        else:
            continue
        for body in bodies:
            for inner in ir.traversal.RecursiveGraphIterator(body):
                names.update(v.name for v in inner.inputs if v is not None and v.name and v.graph is graph)
    return names


class _Structure:
    """Which node of the main graph produces and reads which value (values computed or fed only)."""

    def __init__(self, graph: ir.Graph) -> None:
        self.nodes = list(graph)
        self.inputs = {v.name for v in graph.inputs if v.name and v.name not in graph.initializers}
        self.producer = {v.name: i for i, node in enumerate(self.nodes) for v in node.outputs if v.name}
        flowing = self.inputs | self.producer.keys()
        self.reads = [reads(node, graph) & flowing for node in self.nodes]

    def ancestors(self, names: Sequence[str], done: set[int]) -> set[int]:
        """The nodes not in ``done`` that computing ``names`` needs."""
        needed: set[int] = set()
        stack = [self.producer[n] for n in names if n in self.producer]
        while stack:
            index = stack.pop()
            if index in done or index in needed:
                continue
            needed.add(index)
            stack.extend(self.producer[n] for n in self.reads[index] if n in self.producer)
        return needed

    def boundary(self, done: set[int], later: set[str]) -> set[str]:
        """Values that ``done`` computed (or graph inputs) read by a node not in ``done`` or named in ``later``."""
        wanted = set(later)
        for index, names in enumerate(self.reads):
            if index not in done:
                wanted |= names
        return {n for n in wanted if n in self.inputs or self.producer.get(n, -1) in done}


class ChainedCapture:
    """One model's data passes, each streaming the named values of every calibration batch.

    Call :meth:`run` for pass 0, 1, … in order. Between passes the caller may change the weights
    of nodes that no pass ran yet (the layers whose inputs the passes before streamed), and give
    a node a new initializer input, but not which computed values a node reads.

    Args:
        context: The pipeline's context (sessions, calibration data).
        model: The model to run.
        rounds: The values each pass streams.
        also: Values pass 0 streams too (its whole-model run computes them anyway).
        pass_name: The pass asking, for error messages.
        samples: Calibration samples at most.
        batch_size: Samples per batch.
        augment: What turns each calibration feed into the one that runs.
    """

    def __init__(
        self,
        context: PassContext,
        model: ir.Model,
        rounds: Sequence[Sequence[str]],
        *,
        also: Sequence[str] = (),
        pass_name: str,
        samples: int,
        batch_size: int,
        augment: Augment | None,
    ) -> None:
        self.context = context
        self.model = model
        self.rounds = [list(dict.fromkeys(names)) for names in rounds]
        self.also = list(also)
        self.pass_name = pass_name
        self.samples = samples
        self.batch_size = batch_size
        self.augment = augment
        self.structure = _Structure(model.graph)
        self.done: set[int] = set()
        self.store = _Store(IN_MEMORY)
        self.next_round = 0
        self.whole_runs: str | None = None if SEGMENTS else "segments are off"
        self.runs = {"whole": 0, "segments": 0}
        self.peak_boundary_bytes = 0

    def run(self, index: int) -> Iterator[dict[str, np.ndarray]]:
        """Extracts pass ``index``'s segment (from the model as it is now) and returns its stream.

        Yields, per calibration batch, the pass's values (and ``also`` on pass 0) by name.
        """
        assert index == self.next_round, "passes run in order"
        self.next_round += 1
        if self.whole_runs is not None:
            return self._whole(self.rounds[index] + (self.also if index == 0 else []), keep=set())
        wanted = self.rounds[index]
        computed = self.structure.ancestors(wanted, self.done)
        self.done |= computed
        later = {n for names in self.rounds[index + 1 :] for n in names}
        last = index == len(self.rounds) - 1
        boundary = set() if last else self.structure.boundary(self.done, later)
        if index == 0:
            return self._whole([*wanted, *self.also, *sorted(boundary)], keep=boundary)
        return self._segment(wanted, computed, boundary)

    def close(self) -> None:
        """Deletes the kept boundary values (and their files)."""
        self.store.close()

    def __enter__(self) -> ChainedCapture:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _fall_back(self, reason: str) -> None:
        self.whole_runs = reason
        self.store.close()

    def _whole(self, names: list[str], keep: set[str]) -> Iterator[dict[str, np.ndarray]]:
        """Runs the whole model; keeps the ``keep`` values of each batch for the next passes."""
        self.runs["whole"] += 1
        stream = capture(
            self.context,
            self.model,
            names,
            pass_name=self.pass_name,
            samples=self.samples,
            batch_size=self.batch_size,
            augment=self.augment,
        )
        for batch, (_, arrays) in enumerate(stream):
            if keep and self.whole_runs is None:
                self._keep(batch, arrays, keep)
            yield arrays

    def _keep(self, batch: int, arrays: Mapping[str, object], names: set[str]) -> None:
        """Stores a batch's new boundary values, forgets the others; a value that is no tensor ends the segments."""
        held = self.store.batches[batch] if batch < len(self.store.batches) else {}
        for name in sorted(names - held.keys()):
            array = arrays[name]
            if not isinstance(array, np.ndarray):
                self._fall_back(f"value '{name}' read by a later data pass is not a tensor")
                return
            self.store.put(batch, name, array)
        self.store.keep(batch, names)
        self.peak_boundary_bytes = max(self.peak_boundary_bytes, self.store.nbytes)

    def _segment(self, wanted: list[str], computed: set[int], boundary: set[str]) -> Iterator[dict[str, np.ndarray]]:
        """The stream of a pass that runs the ``computed`` nodes, fed the kept boundary values."""
        structure = self.structure
        produced = {v.name for i in computed for v in structure.nodes[i].outputs if v.name}
        inputs = sorted({n for i in computed for n in structure.reads[i]} - produced)
        outputs = [n for n in dict.fromkeys([*wanted, *sorted(boundary)]) if n in produced]
        session = None
        if outputs:
            try:
                graph = ir.convenience.extract(self.model.graph, inputs, outputs)
            except ValueError as error:
                self._fall_back(f"a segment cannot be extracted ({error})")
                return self._whole(wanted, keep=set())
            first = self.store.batches[0] if self.store.batches else {}
            for value in graph.inputs:
                if value.type is None and value.name in first:
                    value.type = ir.TensorType(ir.DataType.from_numpy(first[value.name].dtype))
            segment = ir.Model(graph, ir_version=self.model.ir_version, functions=list(self.model.functions.values()))
            try:
                session = self.context.session(segment)[0]
            except RuntimeUnavailable as error:
                self._fall_back(f"onnxruntime cannot load a segment ({error})")
                return self._whole(wanted, keep=set())
        return self._stream(session, inputs, wanted, boundary)

    def _stream(
        self, session: object, inputs: list[str], wanted: list[str], boundary: set[str]
    ) -> Iterator[dict[str, np.ndarray]]:
        """Runs ``session`` (None: nothing to compute) on each batch's kept values; keeps the new boundary."""
        self.runs["segments"] += session is not None
        initializers = self.model.graph.initializers
        for batch, held in enumerate(self.store.batches):
            arrays = dict(run(session, {n: held[n] for n in inputs})) if session is not None else {}
            for name in wanted:
                if name not in arrays:
                    tensor = initializers[name].const_value if name in initializers else None
                    arrays[name] = held[name] if tensor is None else tensor.numpy()
            if self.whole_runs is None:
                self._keep(batch, arrays, boundary)
            yield {name: arrays[name] for name in wanted}
