"""Run an ingest: enumerate units, map them in worker processes, commit them in order, settle duplicates, report.

Commit protocol (what makes a run idempotent and safe to kill at any point):
1. a worker writes a unit's parts to `STORE/.staging/<uid>/` (a resource repeated inside the unit is kept once);
2. the parent, in unit order, moves the parts to `STORE/<table>/part-<uid>.parquet`, then writes
   `STORE/_ledger/<uid>.json` (with its commit sequence number);
3. at the end, resources loaded more than once (same Type/id, from different units or runs) are settled: the
   latest version's content stays, once; removals are journalled in `STORE/_journal/` before they are made;
4. at start, journalled removals are finished, parts without a ledger entry (a run killed between 2's moves and
   its ledger write) are deleted and the staging area is cleared, so a re-run redoes exactly what was unfinished,
   and step 3 settles anything a killed run left unsettled.
"""

from __future__ import annotations

import concurrent.futures as cf
import ctypes
import gzip
import logging
import multiprocessing as mp
import os
import shutil
import signal
import sys
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import orjson

from careloop.errors import CareloopError
from careloop.ingest.units import (
    BUNDLE_BATCH_FILES,
    Unit,
    UnitResult,
    file_digest,
    ndjson_units,
    process_unit,
    unread_text,
    use_medications,
    void_text,
)
from careloop.ingest.versions import newest, version_of
from careloop.store import TABLE_DIRS, EventStore

log = logging.getLogger(__name__)


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
    skipped_files: list[str] = field(default_factory=list)  # files under a source that are not input (`_files`)

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
            "skipped_files": self.skipped_files,
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
            if not self.reasons[k]:  # a reason taken back (a copy settled away) is not shown as 0
                del self.reasons[k]


# --- sources -> units --------------------------------------------------------------------------------


def _is_url(source: object) -> bool:
    return isinstance(source, str) and source.startswith(("http://", "https://"))


NDJSON_SUFFIXES = (".ndjson", ".ndjson.gz", ".jsonl", ".jsonl.gz")
JSON_SUFFIXES = (".json", ".json.gz")


def _files(source: Path) -> tuple[list[Path], list[Path], list[Path]]:
    """(NDJSON files, Bundle/resource JSON files, files skipped) under a path. A file named as neither (`Patient`
    with no extension, `notes.txt`) is skipped and listed, so that the report says what was not read; a Bulk
    export's manifest and server log are not input."""
    if source.is_file():
        name = source.name
        if name.endswith(NDJSON_SUFFIXES):
            return [source], [], []
        return [], [source], []  # named by the user: read as JSON (quarantined, with the reason, if it is not)
    if not source.is_dir():
        raise IngestError(f"source {source} does not exist")
    nd, js, skipped = [], [], []
    for p in sorted(source.rglob("*")):
        if not p.is_file():
            continue
        name = p.name
        if name.endswith(NDJSON_SUFFIXES):
            if name.startswith("log."):
                continue  # a Bulk export's server log, not resources
            nd.append(p)
        elif name.endswith(JSON_SUFFIXES):
            if name != "manifest.json":
                js.append(p)
        else:
            skipped.append(p)
    return nd, js, skipped


class _Plan:
    """Units to run, and the work already done (from the ledger)."""

    def __init__(self, store: EventStore, report: IngestReport) -> None:
        self.store = store
        self.report = report

    def done(self, uid: str) -> dict | None:
        p = self.store.ledger / f"{uid}.json"
        return orjson.loads(p.read_bytes()) if p.exists() else None

    def replay(self, record: dict) -> None:
        """A unit or file ingested before: its resources count as skipped (already ingested)."""
        inputs = record["counts"]["input"]
        self.report.add({"input": inputs, "skipped": inputs}, {"skipped: already ingested": sum(inputs.values())})
        self.report.units_already_done += record.get("units", 1)


def _first_type(path: Path) -> str | None:
    """The resourceType of an NDJSON file's first resource (a Bulk Data file holds one type), or None."""
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            for line in f:
                if line.strip():
                    head = orjson.loads(line.removeprefix(b"\xef\xbb\xbf"))
                    return head.get("resourceType") if isinstance(head, dict) else None
    except (OSError, EOFError, zlib.error, orjson.JSONDecodeError):
        return None  # read as input later, and quarantined there with the reason
    return None


DEFINITION_TYPES = ("Medication",)  # NDJSON files of these are loaded before every other unit (`store_medications`)


def _units(sources: Iterable[object], plan: _Plan, rest_options: dict,
           definitions: bool = False) -> Iterator[Unit | tuple[str, str, int]]:
    """Units to process; a ("file-done", key, n) marker follows the last unit of each NDJSON file. `definitions`:
    only the NDJSON files whose resources are `DEFINITION_TYPES` (their first one is), else every other source."""
    for source in sources:
        if definitions and _is_url(source):
            continue
        if _is_url(source):
            from careloop.ingest.rest import RestSource, fetch_pages

            src = RestSource(base_url=str(source), **rest_options)
            for page in fetch_pages(src):
                import hashlib

                uid = "page-" + hashlib.sha256(page.body).hexdigest()[:32]
                yield Unit(uid, "page", page.label, page.body)
            continue
        nd, js, skipped = _files(Path(source))
        definition_files = [p for p in nd if _first_type(p) in DEFINITION_TYPES]
        if definitions:
            nd, js, skipped = definition_files, [], []
        else:
            nd = [p for p in nd if p not in definition_files]
        for path in skipped:
            log.warning("skipping %s: not named .ndjson, .jsonl or .json (optionally .gz)", path)
            plan.report.skipped_files.append(str(path))
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
    """Moves each unit's parts into the store, in unit order, and records it in the ledger. Duplicates across
    units are settled once at the end of the run (`settle_duplicates`), so committing needs no in-memory index
    and memory does not grow with the store."""

    def __init__(self, store: EventStore, report: IngestReport) -> None:
        self.store = store
        self.report = report
        self.seq = time.time_ns()
        self.units: set[str] = set()

    def commit(self, res: UnitResult) -> None:
        staged = self.store.staging / res.uid
        for table in TABLE_DIRS:
            part = staged / f"{table}.parquet"
            if part.exists():
                os.replace(part, self.store.root / table / f"part-{res.uid}.parquet")
        self.seq = max(self.seq + 1, time.time_ns())  # commit order, for "the latest version wins"
        record = {"uid": res.uid, "label": res.label, "seq": self.seq,
                  "counts": {k: dict(v) for k, v in res.counts.items()}, "reasons": dict(res.reasons),
                  "rows": res.rows}
        tmp = self.store.ledger / f".{res.uid}.tmp"
        tmp.write_bytes(orjson.dumps(record))
        os.replace(tmp, self.store.ledger / f"{res.uid}.json")
        shutil.rmtree(staged, ignore_errors=True)
        self.units.add(res.uid)
        self.report.add(res.counts, res.reasons)
        self.report.units += 1


SETTLE_MEMORY = "512MB"  # DuckDB's limit for the duplicate check; beyond it, it spills to disk


def settle_duplicates(store: EventStore, report: IngestReport, run_units: set[str]) -> int:
    """Resources loaded more than once (same Type/id) keep one copy: the newest version (`ingest.versions`: by
    meta.lastUpdated, else a numeric meta.versionId, else the copy committed last), and among copies with its
    content the first loaded. Removals are journalled before they are made. Returns how many copies were
    removed."""
    parts = store.parts("resources")
    if not parts:
        return 0
    files = "[" + ", ".join(f"'{p}'" for p in parts) + "]"
    con = duckdb.connect()
    try:
        con.execute(f"SET memory_limit = '{SETTLE_MEMORY}'")
        con.execute(f"SET temp_directory = '{store.staging / 'duckdb-spill'}'")
        rows = con.execute(f"""
            WITH r AS (SELECT resource_key, key_hash, content_hash, unit, last_updated, version_id, withdrawn
                       FROM read_parquet({files})),
                 twice AS (SELECT key_hash FROM r GROUP BY key_hash HAVING count(*) > 1)
            SELECT resource_key, list(unit), list(content_hash), list(last_updated), list(version_id),
                   list(withdrawn)
            FROM r WHERE key_hash IN (SELECT key_hash FROM twice)
            GROUP BY resource_key HAVING count(*) > 1""").fetchall()
    finally:
        con.close()
    if not rows:
        return 0
    seq: dict[str, int] = {}
    for _, units, *_ in rows:
        for u in units:
            if u not in seq:
                rec = store.ledger / f"{u}.json"
                seq[u] = orjson.loads(rec.read_bytes()).get("seq", 0) if rec.exists() else 0
    removals: dict[str, set[str]] = {}
    counts: dict[str, Counter] = {"loaded": Counter(), "skipped": Counter()}
    reasons: Counter = Counter()
    for key, units, hashes, updated, versions, withdrawn in rows:
        copies = sorted(zip(units, hashes, updated, versions, withdrawn, strict=True), key=lambda c: seq[c[0]])
        winner = newest([version_of(c[2], c[3]) for c in copies])
        latest = copies[winner][1]
        keep = next(c for c in copies if c[1] == latest)
        rtype = key.split("/", 1)[0]
        for i, (unit, h, _, _, why) in enumerate(copies):
            if copies[i] is keep:
                continue
            removals.setdefault(unit, set()).add(key)
            if unit in run_units:  # counted as loaded by this run: it was not, after all
                counts["loaded"][rtype] -= 1
                counts["skipped"][rtype] += 1
                if why is not None:
                    reasons[void_text(why)] -= 1
                reasons["skipped: duplicate of a loaded resource (same Type/id, same content)" if h == latest
                        else "skipped: older than the version already loaded (by meta)" if i > winner
                        else "skipped: superseded by a newer version in the same run"] += 1
        if keep[0] in run_units and any(h != latest for _, h, *_ in copies[:winner]):
            reasons["loaded: update replacing an earlier version (same Type/id, new content)"] += 1
    reasons.subtract(_unread_in(store, {u: k for u, k in removals.items() if u in run_units}))
    entry = store.journal / f"settle-{time.time_ns()}.json"
    entry.write_bytes(orjson.dumps({u: sorted(k) for u, k in removals.items()}))
    for unit, keys in removals.items():
        store.remove_resources(unit, keys)
    entry.unlink()
    report.add(counts, reasons)
    return sum(len(k) for k in removals.values())


def _unread_in(store: EventStore, removals: dict[str, set[str]]) -> Counter:
    """The "value not read" reasons of the copies about to be removed from these units (this run counted them)."""
    out: Counter = Counter()
    parts = {u: store.root / "events" / f"part-{u}.parquet" for u in removals}
    parts = {u: p for u, p in parts.items() if p.exists()}
    if not parts:
        return out
    con = duckdb.connect()
    try:
        for unit, part in parts.items():
            found = con.execute(f"""
                SELECT source_resource || '/' || source_id, code, unit FROM read_parquet('{part}')
                WHERE numeric_value IS NULL AND original_value IS NOT NULL""").fetchall()
            out.update(unread_text(code, sent) for key, code, sent in found if key in removals[unit])
    finally:
        con.close()
    return out


# --- the run ---------------------------------------------------------------------------------------


def ingest(sources: list[object], store: Path | str, *, workers: int | None = None,
           rest_options: dict | None = None, progress: Callable[[UnitResult], None] | None = None) -> IngestReport:
    """Ingest every source into the store at `store`; returns the reconciled report.

    Medication files (`DEFINITION_TYPES`) are loaded first, in this process, so that requests in the other files
    of a Bulk export (or of a later run) that name a Medication read its code: the store's Medications are handed to
    the workers when their pool starts (`store_medications`)."""
    t0 = time.perf_counter()
    st = EventStore.create(Path(store))
    report = IngestReport(sources=[str(s) for s in sources], store=str(st.root))
    with st.lock():
        st.recover()
        plan = _Plan(st, report)
        committer = _Committer(st, report)
        use_medications({})
        try:
            _run_units(_units(sources, plan, {}, definitions=True), _InProcess(), 1, st, plan, committer, progress)
            medications = store_medications(st)
            use_medications(medications)
            workers = workers or os.cpu_count() or 1
            ctx = mp.get_context("fork" if os.name == "posix" else "spawn")
            pool_cm = _InProcess() if workers == 1 else cf.ProcessPoolExecutor(
                max_workers=workers, mp_context=ctx, initializer=_init_worker, initargs=(medications, os.getpid()))
            with pool_cm as pool:
                _run_units(_units(sources, plan, rest_options or {}), pool, workers, st, plan, committer, progress)
        finally:
            use_medications({})
        _settle_if_needed(st, report, committer.units)
        st.refresh_catalog()
    report.seconds = time.perf_counter() - t0
    return report


def _init_worker(medications: dict[str, tuple[str, ...]], parent: int) -> None:
    """The pool's initializer: the worker dies with the ingest process, and reads the store's Medications."""
    _die_with_parent(parent)
    use_medications(medications)


_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _die_with_parent(parent: int) -> None:
    """Have the kernel SIGKILL this worker when `parent` (the ingest process, which forked it) dies, even of a
    SIGKILL (the out-of-memory killer): an orphaned worker would otherwise wait forever on the pool's pipe, whose
    writing end it holds itself. Linux only (PR_SET_PDEATHSIG); elsewhere, or if prctl is refused, nothing is done.

    The signal comes when the thread that forked the worker ends: the pool forks all its workers at its first
    submit, from the thread that runs `ingest`, and that thread waits for the workers before it returns."""
    if not sys.platform.startswith("linux"):
        return
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return
    if prctl(_PR_SET_PDEATHSIG, ctypes.c_ulong(signal.SIGKILL), ctypes.c_ulong(0), ctypes.c_ulong(0),
             ctypes.c_ulong(0)) != 0:
        return
    if os.getppid() != parent:  # the parent died before prctl: no signal will come
        os._exit(1)


def _run_units(units: Iterable[Unit | tuple[str, str, int]], pool, workers: int, st: EventStore, plan: _Plan,
               committer: _Committer, progress: Callable[[UnitResult], None] | None) -> None:
    """Map `units` on `pool` (at most two per worker in flight) and commit them in order as they finish."""
    pending: dict[int, cf.Future] = {}
    ready: dict[int, UnitResult | None] = {}
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

    for unit in units:
        if isinstance(unit, tuple):
            order.append(unit)
            continue
        record = plan.done(unit.uid)
        if record:
            plan.replay(record)
            order.append(None)
            ready[len(order) - 1] = None
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


def store_medications(st: EventStore) -> dict[str, tuple[str, ...]]:
    """The Medications in the store, by id, with their known codes (in the order the mapping gave them). A
    Medication loaded more than once and not yet settled (this run's copy and an earlier run's) is read from the
    copy committed last (the ledger's order)."""
    import pyarrow.parquet as pq

    found: dict[str, tuple[int, tuple[str, ...]]] = {}
    for part in st.parts("directory"):
        t = pq.read_table(part, columns=["resource_type", "resource_id", "code"])
        rows = [(rid, code) for rtype, rid, code in zip(*(c.to_pylist() for c in t.columns), strict=True)
                if rtype == "Medication"]
        if not rows:
            continue
        rec = st.ledger / f"{part.stem.removeprefix('part-')}.json"
        seq = orjson.loads(rec.read_bytes()).get("seq", 0) if rec.exists() else 0
        codes: dict[str, list[str]] = {}
        for rid, code in rows:
            codes.setdefault(rid, [])
            if code is not None:
                codes[rid].append(code)
        for rid, cs in codes.items():
            if rid not in found or found[rid][0] <= seq:
                found[rid] = (seq, tuple(cs))
    return {rid: cs for rid, (_, cs) in found.items()}


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


def _settle_if_needed(st: EventStore, report: IngestReport, run_units: set[str]) -> None:
    """Settle duplicates unless nothing was committed since the last settling (a re-run of known input)."""
    marker = st.journal / "settled.json"
    committed = sum(1 for p in st.ledger.glob("*.json") if not p.name.startswith("file-"))
    if not run_units and marker.exists() and orjson.loads(marker.read_bytes()).get("units") == committed:
        return
    settle_duplicates(st, report, run_units)
    tmp = st.journal / ".settled.tmp"
    tmp.write_bytes(orjson.dumps({"units": committed}))
    os.replace(tmp, marker)


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
