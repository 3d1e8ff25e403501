"""Node names shortened from the middle for ``inspect``'s text tables."""

from __future__ import annotations

import pytest

from onnxshrink.inspect.names import shorten, shorten_all


@pytest.mark.parametrize(
    ("name", "width", "expected"),
    [("short", 10, "short"), ("abcdefghijklmnop", 9, "abcd…mnop"), ("abcdefghijklmnop", 10, "abcde…mnop")],
)
def test_shorten_keeps_start_and_end(name: str, width: int, expected: str) -> None:
    assert shorten(name, width) == expected and len(shorten(name, width)) <= max(width, len(name))


def test_names_that_shorten_alike_are_widened_until_distinct() -> None:
    names = ["model/block_0/" + "x" * 40 + "/Mul_1", "model/block_0/" + "x" * 40 + "/Mul_2", "model/" + "y" * 30]
    short = shorten_all(names, 20)
    assert len(set(short.values())) == 3
    assert all(s.startswith(n[:6]) and s.endswith(n[-5:]) for n, s in short.items())
