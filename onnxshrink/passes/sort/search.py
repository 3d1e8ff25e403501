"""The N:M channel-permutation search behind ``sort:for=N:M``: greedy channel swaps, Apex ASP style.

A layer's N:M prune keeps the ``N`` largest ``|w|`` of every ``M`` consecutive input channels
(a *stripe*) in each row. Permuting the input channels changes which channels share a stripe,
and so how much magnitude survives. The search starts from the current order and repeatedly
applies the best improving swap of two channels in different stripes, the way NVIDIA Apex's
permutation search does, until no swap gains.

Swaps are scored in closed form: with ``R`` the ``M - 1`` values a stripe keeps once a channel
leaves it, the stripe with ``x`` added keeps ``topN(R) + max(0, x - R_(N))`` per row, where
``R_(N)`` is the N-th largest of ``R``. So one matrix ``U[p, q] = sum_rows max(0, X[:, q] - t[p])``
prices every swap at once, and a swap refreshes only the rows of the two stripes it touched.

Stripes are searched in chunks of at most ``chunk`` channels (so the work is ``K * chunk * rows``
rather than ``K**2 * rows``); later rounds regroup the stripes (strided, then shuffled) so channels
can travel between first-round chunks.
"""

from __future__ import annotations

import time

import numpy as np

_ROWS = 1024  # rows (output channel x kernel position) scored per search; the final score uses all


def kept_magnitude(matrices: list[np.ndarray], order: np.ndarray, n: int, m: int) -> float:
    """Fraction of ``sum |W|`` kept by an N:M prune once the columns are taken in ``order``.

    Each matrix is ``|W|`` as ``[rows, K]`` with the group's channels as columns.
    """
    kept = total = 0.0
    for matrix in matrices:
        stripes = matrix[:, order].reshape(matrix.shape[0], -1, m)
        top = np.sort(stripes, axis=2)[:, :, m - n :]
        kept += float(top.sum(dtype=np.float64))
        total += float(matrix.sum(dtype=np.float64))
    return kept / total if total > 0 else 1.0


def _scoring_rows(matrices: list[np.ndarray]) -> np.ndarray:
    rows = np.concatenate(matrices, axis=0).astype(np.float32, copy=False)
    if rows.shape[0] > _ROWS:
        pick = np.random.default_rng(0).choice(rows.shape[0], _ROWS, replace=False)
        rows = rows[np.sort(pick)]
    return np.ascontiguousarray(rows)


class _Chunk:
    """The swap search over one set of stripes; ``xt[p]`` is the column at position p, stripe after stripe."""

    def __init__(self, x: np.ndarray, n: int, m: int) -> None:
        self.xt = np.ascontiguousarray(x.T)
        self.n, self.m = n, m
        self.size = self.xt.shape[0]
        self.tsum = np.zeros(self.size)
        self.t = np.zeros_like(self.xt)
        self.value = np.zeros(self.size // m)
        for stripe in range(self.size // m):
            self._stripe(stripe)
        self.u = np.stack([self._prices(p) for p in range(self.size)])
        self.same = np.kron(np.eye(self.size // m, dtype=bool), np.ones((m, m), dtype=bool))

    def _prices(self, p: int) -> np.ndarray:
        """``U[p, :]``: what position p's stripe, without p, gains per row from each column."""
        return np.maximum(self.xt - self.t[p][None, :], 0).sum(axis=1)

    def _stripe(self, stripe: int) -> None:
        """Refreshes the stripe's kept value and, per member, what it keeps without that member."""
        n, m = self.n, self.m
        cols = self.xt[stripe * m : (stripe + 1) * m]
        self.value[stripe] = float(np.sort(cols, axis=0)[m - n :].sum(dtype=np.float64))
        for i in range(m):
            rest = np.sort(np.delete(cols, i, axis=0), axis=0)[::-1]
            p = stripe * m + i
            self.tsum[p] = float(rest[:n].sum(dtype=np.float64))
            self.t[p] = rest[n - 1]

    def best_swap(self) -> tuple[int, int, float]:
        stripe_of = np.arange(self.size) // self.m
        base = (self.tsum - self.value[stripe_of])[:, None] + self.u
        gain = base + base.T
        gain[self.same] = -np.inf
        flat = int(np.argmax(gain))
        p, q = divmod(flat, self.size)
        return p, q, float(gain[p, q])

    def swap(self, p: int, q: int) -> None:
        self.xt[[p, q]] = self.xt[[q, p]]
        for stripe in {p // self.m, q // self.m}:
            self._stripe(stripe)
            for row in range(stripe * self.m, (stripe + 1) * self.m):
                self.u[row] = self._prices(row)
        for col in (p, q):
            self.u[:, col] = np.maximum(self.xt[col][None, :] - self.t, 0).sum(axis=1)


def search(
    matrices: list[np.ndarray], n: int, m: int, *, chunk: int = 128, rounds: int = 3, seconds: float | None = None
) -> tuple[np.ndarray, bool]:
    """The column order (new position -> old column) that keeps the most N:M magnitude found.

    The search is deterministic (fixed regroupings, fixed swap limit per chunk); ``seconds``
    only guards against very large layers.

    Args:
        matrices: ``|W|`` of each layer as ``[rows, K]``, the same K channels as columns.
        n: The pattern keeps ``n`` of every ``m`` weights.
        m: The pattern's group size; K must be a multiple of ``m``.
        chunk: Channels searched together (a multiple of ``m``).
        rounds: Regroupings of the stripes (contiguous, strided, shuffled, shuffled, ...).
        seconds: Wall-time cap for this call, or None; when it cuts the search, the best order
            so far is returned and the flag is True.

    Returns:
        The order, and whether the time cap cut the search short.
    """
    rows = _scoring_rows(matrices)
    size = rows.shape[1]
    order = np.arange(size)
    stripes = size // m
    per_chunk = max(2, chunk // m)
    deadline = time.perf_counter() + seconds if seconds is not None else None
    scale = float(rows.sum(dtype=np.float64)) or 1.0
    rng = np.random.default_rng(0)
    for round_ in range(rounds):
        count = -(-stripes // per_chunk)
        if round_ == 0:
            assignment = np.arange(stripes) // per_chunk
        elif round_ == 1:
            assignment = np.arange(stripes) % count
        else:
            assignment = rng.permutation(stripes) % count
        for part in range(count):
            members = np.flatnonzero(assignment == part)
            if len(members) < 2:
                continue
            if deadline is not None and time.perf_counter() > deadline:
                return order, True
            positions = (members[:, None] * m + np.arange(m)[None, :]).reshape(-1)
            state = _Chunk(rows[:, order[positions]], n, m)
            for _ in range(len(positions)):
                p, q, gain = state.best_swap()
                if gain <= 1e-7 * scale:
                    break
                state.swap(p, q)
                order[positions[[p, q]]] = order[positions[[q, p]]]
    return order, False
