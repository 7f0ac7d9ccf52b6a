"""The cluster bootstrap, as weights: a replicate is how many times each cluster (patient) is drawn.

Resampling K clusters with replacement is the same as giving cluster k the weight M[b, k], the number of times it
was drawn in replicate b, and every row of the cluster that weight. Every metric in this package is a weighted
statistic, so all replicates of a chunk are computed at once from the matrix M instead of materialising each
resample. Replicate b is always the b-th draw of one generator seeded with `seed`, whatever the chunk size, so the
same seed gives the same replicates in `evaluate`, `compare` and `fairness` (which makes their intervals paired).
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np
from threadpoolctl import threadpool_limits

T = TypeVar("T")
# Replicates x cells held in one array: 500,000 float64 = 4 MB, small enough to stay near the cache across the
# dozen passes a chunk makes over it (16 MB chunks measured about 1.5x slower), large enough that the fixed cost of
# a chunk stays small when n is large and few replicates fit in one (1 MB chunks: 1.3x slower at 100,000 rows).
CHUNK_ELEMENTS = 500_000


def workers() -> int:
    """Threads for the bootstrap: NumPy releases the GIL in its array loops, so chunks run in parallel."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, 4))


def chunk_size(n_boot: int, width: int) -> int:
    """Replicates per chunk so that a (chunk x width) float64 array holds about CHUNK_ELEMENTS values."""
    return max(1, min(max(n_boot, 1), CHUNK_ELEMENTS // max(width, 1)))


def cluster_counts(n_clusters: int, n_boot: int, seed: int, chunk: int) -> Iterator[np.ndarray]:
    """Yield (C, K) float64 arrays: row b of the stream is how often each of the K clusters is drawn in replicate b.

    Each replicate draws K cluster indices uniformly with replacement (`rng.integers`), then counts them.

    >>> m = np.vstack(list(cluster_counts(4, 5, seed=0, chunk=2)))
    >>> m.shape, bool((m.sum(axis=1) == 4).all())
    ((5, 4), True)
    >>> bool((m == np.vstack(list(cluster_counts(4, 5, seed=0, chunk=5)))).all())
    True
    """
    rng = np.random.default_rng(seed)
    for start in range(0, n_boot, chunk):
        size = min(chunk, n_boot - start)
        out = np.empty((size, n_clusters))
        for j in range(size):
            out[j] = np.bincount(rng.integers(0, n_clusters, n_clusters), minlength=n_clusters)
        yield out


def map_replicates(fn: Callable[[np.ndarray], T], n_clusters: int, n_boot: int, seed: int, width: int) -> list[T]:
    """fn(cluster counts of a chunk of replicates) for every chunk, in replicate order, on a few threads.

    The counts are drawn in order in this thread, so the result does not depend on the number of threads; at most
    two chunks per thread are in flight, which bounds memory.
    """
    stream = cluster_counts(n_clusters, n_boot, seed, chunk_size(n_boot, width))
    threads = workers()
    # The parallelism is over chunks: BLAS threads inside the small matrix products only spin (measured 30x the
    # CPU time of a single-threaded (C x m) @ (m x 3) product), so BLAS is held to one thread meanwhile.
    with threadpool_limits(limits=1, user_api="blas"):
        if threads == 1 or n_boot == 0:
            return [fn(m) for m in stream]
        return _threaded(fn, stream, threads)


def _threaded(fn: Callable[[np.ndarray], T], stream: Iterator[np.ndarray], threads: int) -> list[T]:
    out: list[T] = []
    with ThreadPoolExecutor(threads) as pool:
        pending: deque = deque()
        for m in stream:
            pending.append(pool.submit(fn, m))
            if len(pending) >= 2 * threads:
                out.append(pending.popleft().result())
        out.extend(f.result() for f in pending)
    return out


def percentile_interval(values: np.ndarray, ci: float) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap interval along axis 0 (NumPy's default linear interpolation between order statistics),
    ignoring replicates where the statistic is undefined (NaN).

    Statistics with no defined replicate get NaN bounds (reported as no interval).

    >>> lo, hi = percentile_interval(np.array([[1.0, np.nan], [2.0, np.nan], [3.0, np.nan]]), 0.5)
    >>> lo.tolist(), hi.tolist()
    ([1.5, nan], [2.5, nan])
    """
    values = np.asarray(values, dtype=float)
    shape = values.shape[1:]
    flat = values.reshape(values.shape[0], int(np.prod(shape)))
    flat = np.where(np.isfinite(flat), flat, np.nan)
    lo = np.full(flat.shape[1], np.nan)
    hi = np.full(flat.shape[1], np.nan)
    ok = ~np.isnan(flat).all(axis=0) if flat.shape[0] else np.zeros(flat.shape[1], dtype=bool)
    if ok.any():
        alpha = (1 - ci) / 2
        q = np.nanpercentile(flat[:, ok], [100 * alpha, 100 * (1 - alpha)], axis=0)
        lo[ok], hi[ok] = q[0], q[1]
    return lo.reshape(shape), hi.reshape(shape)
