"""Node names shortened for text tables: cut from the middle, so that rows stay distinct.

Exporters put the distinguishing part of a name at both ends (``/encoder/layer.3/.../MatMul``,
``StatefulPartitionedCall/model/dense_3/Tensordot/MatMul``): cutting the tail alone, as a
fixed-width column does, makes many rows read the same.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

_MARK = "…"


def shorten(name: str, width: int) -> str:
    """``name`` when it fits in ``width`` characters, else its start and end around ``…``."""
    if len(name) <= width:
        return name
    keep = max(width - len(_MARK), 2)
    head = (keep + 1) // 2
    return name[:head] + _MARK + name[len(name) - (keep - head) :]


def shorten_all(names: Iterable[str], width: int) -> dict[str, str]:
    """Each name shortened to ``width``, widened where two distinct names would read the same."""
    unique = list(dict.fromkeys(names))
    result = {name: shorten(name, width) for name in unique}
    while True:
        counts = Counter(result.values())
        clashing = [name for name in unique if counts[result[name]] > 1 and result[name] != name]
        if not clashing:
            return result
        for name in clashing:
            result[name] = shorten(name, len(result[name]) + 4)
