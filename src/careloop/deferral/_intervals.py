"""Deferral regions on the score axis: the best union of at most K intervals of bins, and membership tests.

The score axis [0, 1] is cut into bins by `edges` (edges[0] = 0, edges[-1] = 1). Bin b holds the scores s with
edges[b] <= s < edges[b + 1], the last bin also s = 1. A region is a set of bin intervals [a, b) (bins a..b-1),
written on the score axis as [edges[a], edges[b]).
"""

from __future__ import annotations

import numpy as np

Bins = tuple[tuple[int, int], ...]


def uniform_edges(bins: int) -> np.ndarray:
    """bins + 1 equally spaced edges from 0 to 1 (exact at the ends)."""
    return np.arange(bins + 1, dtype=float) / bins


def bin_index(s: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """The bin of each score (the convention of the module docstring)."""
    return np.clip(np.searchsorted(edges, s, side="right") - 1, 0, edges.size - 2)


def best_intervals(gain: np.ndarray, max_intervals: int) -> list[Bins]:
    """For each row of gain (P, T), the union of at most max_intervals bin intervals with the largest total gain.

    Dynamic programme over bins (O(P * T * K)): `outside[k]` is the best total with at most k intervals so far and
    the current bin not deferred, `inside[k]` the same with the current bin inside the k-th interval. Ties lean
    towards deferring less: an interval is kept open past a bin, or continued rather than started anew, only when
    that is strictly better, so zero-gain bins at the ends of a run stay with the AI and a row without a positive
    gain defers nothing. With K = 1 this is the interval from the minimum of the cumulative gain to its later
    maximum (the paper's construction from the cumulative advantage).

    >>> best_intervals(np.array([[-1.0, 2.0, -0.5, 1.0, -3.0, 0.5]]), 1)
    [((1, 4),)]
    >>> best_intervals(np.array([[-1.0, 2.0, -2.5, 1.0, -3.0, 0.5]]), 2)
    [((1, 2), (3, 4))]
    """
    g = np.atleast_2d(np.asarray(gain, dtype=float))
    p, t = g.shape
    k = int(max_intervals)
    if k < 1 or t == 0:
        return [() for _ in range(p)]
    outside = np.zeros((p, k + 1))
    inside = np.full((p, k + 1), -np.inf)
    extended = np.zeros((t, p, k + 1), dtype=bool)  # inside at bin i came from inside at i - 1 (else opened at i)
    closed = np.zeros((t, p, k + 1), dtype=bool)  # outside at bin i came from inside at i - 1 (else stayed out)
    neg = np.full((p, 1), -np.inf)
    for i in range(t):
        opened = np.concatenate([neg, outside[:, :-1]], axis=1)
        ext = inside > opened  # on a tie the previous bin is left out
        cls = inside > outside
        extended[i], closed[i] = ext, cls
        new_inside = np.where(ext, inside, opened) + g[:, i : i + 1]
        outside = np.where(cls, inside, outside)
        inside = new_inside
    in_state = inside[:, k] > outside[:, k]
    kk = np.full(p, k)
    rows = np.arange(p)
    deferred = np.zeros((p, t), dtype=bool)
    for i in range(t - 1, -1, -1):
        deferred[:, i] = in_state
        came_in = np.where(in_state, extended[i, rows, kk], closed[i, rows, kk])
        # inside at i and opened at i -> one interval fewer before it
        kk = np.where(in_state & ~came_in, kk - 1, kk)
        in_state = came_in
    return [runs(row) for row in deferred]


def runs(mask: np.ndarray) -> Bins:
    """Maximal runs of True in a boolean vector, as [a, b) pairs."""
    m = np.concatenate([[False], np.asarray(mask, dtype=bool), [False]])
    d = np.flatnonzero(m[1:] != m[:-1])
    return tuple((int(a), int(b)) for a, b in zip(d[::2], d[1::2], strict=True))


def bins_mask(intervals: Bins, size: int) -> np.ndarray:
    mask = np.zeros(size, dtype=bool)
    for a, b in intervals:
        mask[a:b] = True
    return mask


def in_intervals(s: np.ndarray, intervals: list[tuple[float, float]] | tuple[tuple[float, float], ...]) -> np.ndarray:
    """True where lo <= s < hi for some interval (an interval ending at 1 includes s = 1)."""
    out = np.zeros(s.shape, dtype=bool)
    for lo, hi in intervals:
        out |= (s >= lo) & ((s < hi) | ((hi >= 1.0) & (s <= hi)))
    return out
