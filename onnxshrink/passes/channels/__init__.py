"""Channel dependency groups: which tensors carry a producer's output channels, and how to change them.

The analysis (:func:`analyze`) is one forward walk over the main graph in topological order. Every
producer (Conv, ConvTranspose, Gemm, MatMul with a constant weight) mints one *atom* per output
channel; each value then carries a :class:`Layout` (which axis holds channels, and the atom at each
position) as far as the channel rules (``docs/channels.md``) let it travel: pass-through ops keep it,
Transpose/Squeeze/Unsqueeze/Reduce move the axis, Concat/Split/Slice shift indices, Flatten/Reshape
expand each channel into ``inner`` features, depthwise Conv ties input to output, and coupling ops
(Add/Mul/... of two activations) unify their inputs' atoms position by position.

Attention heads: a Reshape that splits the channel axis into ``(heads, d)`` needs whole heads to
move together, so a first walk notes which producers feed one, and the walk runs again with those
producers minting one atom per head (``inner = d``). Heads then travel on a batch axis through
Transpose, QKᵀ and attention·V (a MatMul of two activations couples its operands' heads), scale,
mask and Softmax, and back through the merging Reshape (``inner = d``) to the output projection.
Computed Reshape targets and Expand-ed masks are read element by element (Shape/Gather/Concat/
Where arithmetic) when shape inference loses them. Unified atoms form a *class* (one channel that
must move or go as a whole); classes linked through a producer form a :class:`ChannelGroup`, the
unit that is permuted or shrunk at once. A group that reaches a graph input or output, a subgraph,
an unknown op or (for removal) a lossy op is refused with its reasons
(:class:`~onnxshrink.passbase.NoMatch`).

The plan is plain data (:meth:`ChannelPlan.describe`). :func:`permute` and :func:`remove` apply
decisions to the graph: every weight, per-channel constant, Split size, Slice bound, Reshape
constant and depthwise ``group`` the group touches is rewritten, copy-on-write.

Modules, in dependency order: ``types`` (layouts, sites, atoms), ``ruleset`` (the contract between
the walk and the rules, and their ``OpTable``), ``index_rules`` and ``rules`` (the per-op rules),
``walk`` (the walk and its shape reasoning), ``groups`` (groups and plans), ``analysis``
(:func:`analyze`), ``edits`` (:func:`permute`, :func:`remove`) and ``dead`` (``prune-channels:dead=only``).
This package only re-exports their public names.
"""

from __future__ import annotations

from onnxshrink.passes.channels.analysis import analyze
from onnxshrink.passes.channels.edits import permute, remove, set_constant_input
from onnxshrink.passes.channels.groups import ChannelGroup, ChannelPlan, iter_ok
from onnxshrink.passes.channels.types import Layout, Purpose, Site

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
