"""Duplicate initializers for ``cleanup``: same dtype, shape and bytes become one.

Tensors are compared in three steps so a large model is barely read: layout (dtype, shape),
then a sampled fingerprint (256 evenly spaced elements), and only for fingerprints that
collide, a SHA-256 of the whole tensor. Memory-mapped tensors are unmapped after each read.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections import Counter
from typing import Any

import numpy as np
import onnx_ir as ir


def _unmap(tensor: ir.TensorProtocol) -> None:
    if isinstance(tensor, ir.ExternalTensor):
        # Unmap: reading must not leave a large model resident. Someone else may still hold a
        # view of the map (then it stays open; only memory use suffers).
        with contextlib.suppress(BufferError):
            tensor.release()


def _tensor_sample(tensor: ir.TensorProtocol) -> bytes:
    """A cheap fingerprint: 256 evenly spaced elements (a memory-mapped tensor reads a few pages)."""
    if tensor.dtype == ir.DataType.STRING:
        return repr(tensor.numpy().reshape(-1)[:256].tolist()).encode()
    flat = np.asarray(tensor.numpy()).reshape(-1)
    count = min(flat.size, 256)
    picks = np.linspace(0, flat.size - 1, num=count).astype(np.int64) if count else np.zeros(0, np.int64)
    sample = flat[picks].tobytes()
    del flat
    _unmap(tensor)
    return sample


def _tensor_digest(tensor: ir.TensorProtocol) -> bytes:
    if tensor.dtype == ir.DataType.STRING:
        return hashlib.sha256(repr(tensor.numpy().tolist()).encode()).digest()
    data = np.ascontiguousarray(tensor.numpy()).reshape(-1).view(np.uint8)
    digest = hashlib.sha256(data.data).digest()
    del data  # drop our view of the memory map so it can be closed
    _unmap(tensor)
    return digest


def dedupe_initializers(graph: ir.Graph, stats: Counter[str]) -> None:
    """Merges the initializers of ``graph`` with equal dtype, shape and bytes into one.

    Initializers that are graph inputs or outputs are left alone: they are part of the signature.
    ``stats`` counts what was merged.
    """
    by_layout: dict[tuple[Any, ...], list[ir.Value]] = {}
    for value in graph.initializers.values():
        if value.const_value is None or value.is_graph_input() or value.is_graph_output():
            continue
        tensor = value.const_value
        by_layout.setdefault((tensor.dtype, tuple(tensor.shape.numpy())), []).append(value)
    for layout_group in by_layout.values():
        if len(layout_group) < 2:
            continue
        # Only tensors that share dtype, shape and a sampled fingerprint are read in full.
        by_sample: dict[bytes, list[ir.Value]] = {}
        for value in layout_group:
            assert value.const_value is not None
            by_sample.setdefault(_tensor_sample(value.const_value), []).append(value)
        for group in by_sample.values():
            if len(group) > 1:
                _merge_identical(graph, group, stats)


def _merge_identical(graph: ir.Graph, group: list[ir.Value], stats: Counter[str]) -> None:
    """Merges initializers of ``group`` (same layout and fingerprint) whose bytes are equal."""
    by_digest: dict[bytes, ir.Value] = {}
    for value in group:
        assert value.const_value is not None
        digest = _tensor_digest(value.const_value)
        kept = by_digest.get(digest)
        if kept is None:
            by_digest[digest] = value
            continue
        value.replace_all_uses_with(kept)
        assert value.name is not None
        graph.initializers.pop(value.name)
        stats["initializers_merged"] += 1
