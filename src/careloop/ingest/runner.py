"""Run an ingest: enumerate units, map them in worker processes, commit them in order, report.

Commit protocol (what makes a run idempotent and safe to kill at any point):
1. a worker writes a unit's parts to `STORE/.staging/<uid>/`;
2. the parent, in unit order, drops resources already in the store (a `Type/id` seen before), moves the parts
   to `STORE/<table>/part-<uid>.parquet`, then writes `STORE/_ledger/<uid>.json`;
3. at start, parts without a ledger entry (a run killed between 2's moves and its ledger write) are deleted
   and the staging area is cleared, so a re-run redoes exactly the unfinished units.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from careloop.errors import CareloopError
from careloop.ingest.units import (
    BUNDLE_BATCH_FILES,
    Unit,
    UnitResult,
    file_digest,
    ndjson_units,
    process_unit,
)
from careloop.store import KEYS, TABLE_DIRS, EventStore


class IngestError(CareloopError):
    """A source cannot be read at all (as opposed to a bad resource, which is quarantined)."""


@dataclass
class IngestReport:
    """Every input resource is loaded, quarantined or skipped; the counts reconcile exactly."""

    sources: list[str]
    store: str
    by_type: dict[str, dict[str, int]] = field(default_factory=dict)
    reasons: dict[str, int] = field(default_factory=dict)
    units: int = 0
    units_already_done: int = 0
    seconds: float = 0.0

    def total(self, what: str) -> int:
        return sum(v[what] for v in self.by_type.values())

    @property
    def reconciled(self) -> bool:
        return all(v["input"] == v["loaded"] + v["quarantined"] + v["skipped"] for v in self.by_type.values())

    def to_json(self) -> dict:
        return {
            "sources": self.sources, "store": self.store,
            "input": self.total("input"), "loaded": self.total("loaded"),
            "quarantined": self.total("quarantined"), "skipped": self.total("skipped"),
            "reconciled": self.reconciled,
            "by_type": dict(sorted(self.by_type.items())), "reasons": dict(sorted(self.reasons.items())),
            "units": self.units, "units_already_done": self.units_already_done,
            "seconds": round(self.seconds, 3),
            "resources_per_second": round(self.total("input") / self.seconds) if self.seconds else None,
        }

    def add(self, counts: dict[str, Counter | dict], reasons: Counter | dict) -> None:
        for what, by in counts.items():
            for rtype, n in by.items():
                row = self.by_type.setdefault(rtype, {"input": 0, "loaded": 0, "quarantined": 0, "skipped": 0})
                row[what] += n
        for k, n in reasons.items():
            self.reasons[k] = self.reasons.get(k, 0) + n


# --- sources -> units --------------------------------------------------------------------------------


def _is_url(source: object) -> bool:
    return isinstance(source, str) and source.startswith(("http://", "https://"))


def _files(source: Path) -> tuple[list[Path], list[Path]]:
    """(NDJSON files, Bundle/resource JSON files) under a path."""
    if source.is_file():
        name = source.name
        return ([source], []) if ".ndjson" in name else ([], [source])
    if not source.is_dir():
        raise IngestError(f"source {source} does not exist")
    nd, js = [], []
    for p in sorted(source.rglob("*")):
        if not p.is_file():
            continue
        name = p.name
        if name.endswith((".ndjson", ".ndjson.gz")):
            if name.startswith("log.") or name == "log.ndjson.gz":
                continue  # a Bulk export's server log, not resources
            nd.append(p)
        elif name.endswith((".json", ".json.gz")) and name != "manifest.json":
            js.append(p)
    return nd, js


class _Plan:
    """Units to run, and the work already done (from the ledger)."""

    def __init__(self, store: EventStore, report: IngestReport) -> None:
        self.store = store
        self.report = report
        self.file_units: dict[str, list[str]] = {}  # file ledger key -> its unit ids

    def done(self, uid: str) -> dict | None:
        p = self.store.ledger / f"{uid}.json"
        return orjson.loads(p.read_bytes()) if p.exists() else None

    def replay(self, record: dict) -> None:
        """A unit or file ingested before: its resources count as skipped (already ingested)."""
        inputs = record["counts"]["input"]
        self.report.add({"input": inputs, "skipped": inputs}, {"skipped: already ingested": sum(inputs.values())})
        self.report.units_already_done += record.get("units", 1)


def _units(sources: Iterable[object], plan: _Plan, rest_options: dict) -> Iterator[Unit | tuple[str, str, int]]:
    """Units to process; a ("file-done", key, n) marker follows the last unit of each NDJSON file."""
    for source in sources:
        if _is_url(source):
            from careloop.ingest.rest import RestSource, fetch_pages

            src = RestSource(base_url=str(source), **rest_options)
            for page in fetch_pages(src):
                import hashlib

                uid = "page-" + hashlib.sha256(page.body).hexdigest()[:32]
                yield Unit(uid, "page", page.label, page.body)
            continue
        nd, js = _files(Path(source))
        for path in nd:
            digest = file_digest(path)
            key = f"file-{digest[:32]}"
            record = plan.done(key)
            if record:
                plan.replay(record)
                continue
            n = 0
            for unit in ndjson_units(path, digest):
                n += 1
                yield unit
            yield ("file-done", key, n)
        for i in range(0, len(js), BUNDLE_BATCH_FILES):
            batch = js[i:i + BUNDLE_BATCH_FILES]
            import hashlib

            h = hashlib.sha256()
            for p in batch:
                h.update(str(p.name).encode())
                h.update(file_digest(p).encode())
            yield Unit("bundles-" + h.hexdigest()[:32], "bundles", f"{batch[0].name}..", paths=tuple(map(str, batch)))


# --- commit ----------------------------------------------------------------------------------------


class _Committer:
    def __init__(self, store: EventStore, report: IngestReport) -> None:
        self.store = store
        self.report = report
        self.known = self._load_known()
        self.fresh: list[np.ndarray] = []
        self.fresh_n = 0
        self.file_counts: dict[str, dict] = {}

    def _load_known(self) -> np.ndarray:
        parts = sorted((self.store.root / "resources").glob("*.parquet"))
        if not parts:
            return np.empty(0, dtype=np.int64)
        col = ds.dataset(parts, format="parquet").to_table(columns=["key_hash"]).column(0)
        known = col.to_numpy().copy()
        known.sort()
        return known

    def _seen(self, hashes: np.ndarray) -> np.ndarray:
        """Which hashes are already in the store. Needles are sorted first, so the binary searches walk the big
        sorted array in order (cache-friendly), then the answer is put back in the caller's order."""
        order = np.argsort(hashes, kind="stable")
        needles = hashes[order]
        hit = _member(self.known, needles)
        for arr in self.fresh:
            hit |= _member(arr, needles)
        out = np.empty(len(hashes), dtype=bool)
        out[order] = hit
        return out

    def _remember(self, hashes: np.ndarray) -> None:
        """Add committed hashes; small sorted runs are merged into the big one now and then (amortised)."""
        self.fresh.append(np.sort(hashes))
        self.fresh_n += len(hashes)
        if self.fresh_n > max(1_000_000, len(self.known) // 4) or len(self.fresh) > 8:
            merged = np.concatenate([self.known, *self.fresh])
            merged.sort(kind="stable")  # duplicates are harmless for membership
            self.known, self.fresh, self.fresh_n = merged, [], 0

    def commit(self, res: UnitResult) -> None:
        staged = self.store.staging / res.uid
        counts = {k: Counter(v) for k, v in res.counts.items()}
        reasons = Counter(res.reasons)
        hashes = res.key_hashes
        if len(hashes):
            dup_in_unit = np.zeros(len(hashes), dtype=bool)
            ordered = np.sort(hashes)
            if (ordered[1:] == ordered[:-1]).any():  # rare: the same Type/id twice in one unit
                _, first = np.unique(hashes, return_index=True)
                dup_in_unit[np.setdiff1d(np.arange(len(hashes)), first)] = True
            candidates = self._seen(hashes) | dup_in_unit
            if candidates.any():
                hashes, superseded = self._drop_duplicates(staged, candidates, counts, reasons)
                if superseded:  # an update: promise, remove the old copies, then commit the new ones
                    entry = self.store.journal / f"{res.uid}.json"
                    entry.write_bytes(orjson.dumps({u: sorted(k) for u, k in superseded.items()}))
                    for unit, keys in superseded.items():
                        self.store.remove_resources(unit, keys)
        for table in TABLE_DIRS:
            part = staged / f"{table}.parquet"
            if part.exists():
                os.replace(part, self.store.root / table / f"part-{res.uid}.parquet")
        record = {"uid": res.uid, "label": res.label, "counts": {k: dict(v) for k, v in counts.items()},
                  "reasons": dict(reasons), "rows": res.rows}
        tmp = self.store.ledger / f".{res.uid}.tmp"
        tmp.write_bytes(orjson.dumps(record))
        os.replace(tmp, self.store.ledger / f"{res.uid}.json")
        shutil.rmtree(staged, ignore_errors=True)
        (self.store.journal / f"{res.uid}.json").unlink(missing_ok=True)
        if len(hashes):
            self._remember(hashes)
        self.report.add(counts, reasons)
        self.report.units += 1

    def _drop_duplicates(self, staged: Path, candidates: np.ndarray, counts: dict[str, Counter],
                         reasons: Counter) -> tuple[np.ndarray, dict[str, set[str]]]:
        """Exact check of the hash hits. A resource already loaded with the same content is skipped; one with
        new content is an update: it is kept, and its old copy is returned for removal (by unit)."""
        index = pq.read_table(staged / "resources.parquet")
        keys = index.column("resource_key").to_pylist()
        chash = index.column("content_hash").to_pylist()
        hit_keys = {keys[i] for i in np.flatnonzero(candidates)}
        loaded: dict[str, tuple[int, str]] = {}
        parts = sorted((self.store.root / "resources").glob("*.parquet"))
        if parts:
            found = ds.dataset(parts, format="parquet").to_table(
                columns=["resource_key", "content_hash", "unit"],
                filter=pc.field("resource_key").isin(pa.array(sorted(hit_keys))))
            for k, h, u in zip(*(found.column(c).to_pylist() for c in ("resource_key", "content_hash", "unit")),
                               strict=True):
                loaded[k] = (h, u)
        keep = np.ones(len(keys), dtype=bool)
        seen_here: set[str] = set()
        superseded: dict[str, set[str]] = {}
        for i, k in enumerate(keys):
            rtype = k.split("/", 1)[0]
            old = loaded.get(k)
            if k in seen_here or (old is not None and old[0] == chash[i]):
                keep[i] = False
                counts["loaded"][rtype] -= 1
                counts["skipped"][rtype] += 1
                reasons["skipped: duplicate of a loaded resource (same Type/id, same content)"] += 1
            elif old is not None:
                superseded.setdefault(old[1], set()).add(k)
                reasons["loaded: update replacing an earlier version (same Type/id, new content)"] += 1
            seen_here.add(k)
        if keep.all():
            return index.column("key_hash").to_numpy(), superseded
        drop = pa.array(sorted({keys[i] for i in np.flatnonzero(~keep)}))
        kept_rows = pa.array(np.flatnonzero(keep))
        pq.write_table(index.take(kept_rows), staged / "resources.parquet", compression="zstd")
        inside = {keys[i] for i in np.flatnonzero(~keep)} - set(loaded)
        for table, (a, b) in KEYS.items():
            part = staged / f"{table}.parquet"
            if not part.exists():
                continue
            t = pq.read_table(part)
            rtype = t.column(a) if a in t.column_names else pa.array([a] * t.num_rows)
            key = pc.binary_join_element_wise(rtype, t.column(b), "/")
            if inside:
                # a duplicate inside this unit: keep the rows of its first occurrence only
                t = _first_occurrence_rows(t, key, drop, set(loaded))
            else:
                t = t.filter(pc.invert(pc.is_in(key, drop)))
            pq.write_table(t, part, compression="zstd")
        return index.take(kept_rows).column("key_hash").to_numpy(), superseded


def _member(sorted_keys: np.ndarray, hashes: np.ndarray) -> np.ndarray:
    """Which of `hashes` are in the sorted array (binary search: no hashing, no copies of the big side)."""
    if not len(sorted_keys):
        return np.zeros(len(hashes), dtype=bool)
    idx = np.searchsorted(sorted_keys, hashes)
    idx[idx == len(sorted_keys)] = len(sorted_keys) - 1
    return sorted_keys[idx] == hashes


def _first_occurrence_rows(t: pa.Table, key: pa.Array, drop: pa.Array, loaded: set[str]) -> pa.Table:
    """Keep rows of keys not dropped, and for keys duplicated within the unit only their first run of rows."""
    keys = key.to_pylist()
    drop_set = set(drop.to_pylist())
    keep = []
    finished: set[str] = set()
    current = None
    for k in keys:
        if k not in drop_set:
            keep.append(True)
            continue
        if k in loaded:
            keep.append(False)
            continue
        if current != k and k in finished:
            keep.append(False)
            continue
        if current != k:
            if current is not None:
                finished.add(current)
            current = k
        keep.append(True)
    return t.filter(pa.array(keep))


# --- the run ---------------------------------------------------------------------------------------


def ingest(sources: list[object], store: Path | str, *, workers: int | None = None,
           rest_options: dict | None = None, progress: Callable[[UnitResult], None] | None = None) -> IngestReport:
    """Ingest every source into the store at `store`; returns the reconciled report."""
    t0 = time.perf_counter()
    st = EventStore.create(Path(store))
    report = IngestReport(sources=[str(s) for s in sources], store=str(st.root))
    with st.lock():
        st.recover()
        plan = _Plan(st, report)
        committer = _Committer(st, report)
        workers = workers or os.cpu_count() or 1
        pending: dict[int, cf.Future] = {}
        ready: dict[int, UnitResult] = {}
        order: list[object] = []  # units and file markers in commit order
        next_commit = 0

        def drain(block: bool) -> None:
            nonlocal next_commit
            if pending:
                done, _ = cf.wait(pending.values(), return_when=cf.FIRST_COMPLETED if block else cf.ALL_COMPLETED)
                for k in [k for k, f in pending.items() if f in done]:
                    ready[k] = pending.pop(k).result()
            while next_commit < len(order):
                item = order[next_commit]
                if isinstance(item, tuple):  # an NDJSON file finished: a ledger entry for the whole file
                    _, key, _n = item
                    _write_file_ledger(st, key, order, next_commit)
                    next_commit += 1
                    continue
                if next_commit not in ready:
                    break
                res = ready.pop(next_commit)
                order[next_commit] = None  # release the unit's data
                if res is not None:  # None: a unit committed by an earlier run
                    committer.commit(res)
                    if progress:
                        progress(res)
                next_commit += 1

        ctx = mp.get_context("fork" if os.name == "posix" else "spawn")
        pool_cm = _InProcess() if workers == 1 else cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx)
        with pool_cm as pool:
            for unit in _units(sources, plan, rest_options or {}):
                if isinstance(unit, tuple):
                    order.append(unit)
                    continue
                record = plan.done(unit.uid)
                if record:
                    plan.replay(record)
                    order.append(None)
                    ready[len(order) - 1] = None  # type: ignore[assignment]
                    continue
                order.append(unit)
                pending[len(order) - 1] = pool.submit(process_unit, unit, str(st.staging))
                while len(pending) >= 2 * workers:
                    drain(block=True)
            while pending or next_commit < len(order):
                before = next_commit
                drain(block=bool(pending))
                if not pending and next_commit == before:
                    break
        st.refresh_catalog()
    report.seconds = time.perf_counter() - t0
    return report


class _InProcess:
    """An executor that runs each unit at once in this process (one worker: no pool to start)."""

    def __enter__(self) -> _InProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def submit(self, fn: Callable, *args: object) -> cf.Future:
        fut: cf.Future = cf.Future()
        try:
            fut.set_result(fn(*args))
        except BaseException as exc:  # handed to the caller through the future, as a pool would
            fut.set_exception(exc)
        return fut


def _write_file_ledger(st: EventStore, key: str, order: list[object], end: int) -> None:
    """Sum the ledger records of a file's units into one record, so a re-run skips the file unread."""
    counts: dict[str, Counter] = {k: Counter() for k in ("input", "loaded", "quarantined", "skipped")}
    n = 0
    prefix = key[5:5 + 24]
    for p in st.ledger.glob(f"{prefix}-*.json"):
        rec = orjson.loads(p.read_bytes())
        for k, by in rec["counts"].items():
            counts[k].update(by)
        n += 1
    record = {"uid": key, "counts": {k: dict(v) for k, v in counts.items()}, "units": n}
    tmp = st.ledger / f".{key}.tmp"
    tmp.write_bytes(orjson.dumps(record))
    os.replace(tmp, st.ledger / f"{key}.json")
