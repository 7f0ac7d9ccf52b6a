"""Units of work: a slice of an NDJSON file, a batch of Bundle files, or one REST page.

A unit is processed in a worker into staged Parquet parts, then committed by the parent in unit order. Its
id comes from its content, so re-running the same input finds the same units already committed.
"""

from __future__ import annotations

import gc
import gzip
import hashlib
import itertools
import os
import time
import zlib
from collections import ChainMap, Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from careloop import contracts as C
from careloop.contracts import content_hash, key_hash
from careloop.ingest import model as M
from careloop.ingest.mapping import (
    CANONICAL_UNITS,
    Batch,
    Context,
    Reject,
    Skip,
    append_row,
    decode,
    map_resource,
    medication_definition,
)
from careloop.ingest.versions import meta_version, supersedes

NDJSON_CHUNK_BYTES = int(os.environ.get("CARELOOP_INGEST_CHUNK_BYTES", 12 << 20))  # env: for tests
BUNDLE_BATCH_FILES = 250
_ID_COLUMN = {"enc": "encounter_id", "pat": "patient_id", "notes": "note_id", "dir": "resource_id"}  # Batch's
# tables other than events, and the column naming the resource each row came from
_TABLE_OF = {"Encounter": "enc", "Patient": "pat", "DocumentReference": "notes", "Organization": "dir",
             "Location": "dir", "Practitioner": "dir"}


@dataclass
class Unit:
    uid: str
    kind: str  # "ndjson", "bundles", "page"
    label: str
    data: bytes = b""  # ndjson lines or a page body
    first_line: int = 1
    paths: tuple[str, ...] = ()


@dataclass
class UnitResult:
    uid: str
    label: str
    counts: dict[str, Counter]  # input/loaded/quarantined/skipped by resource type
    reasons: Counter  # quarantine reasons and skip rules
    seconds: float = 0.0
    rows: int = 0
    extra: dict = field(default_factory=dict)


class _Collector:
    """Buffers of one unit: mapped rows, quarantine and the resource index."""

    def __init__(self, uid: str) -> None:
        self.uid = uid
        self.batch = Batch()
        self.q: dict[str, list] = {k: [] for k in C.QUARANTINE.names}
        self.keys: list[str] = []
        self.live: dict[str, int] = {}  # Type/id -> index of the copy kept so far (in keys, content, ...)
        self.content: list[int] = []
        self.sources: list[str | tuple[str, int]] = []
        self.types: list[str] = []
        self.metas: dict[int, M.Meta] = {}  # index -> meta, for copies whose meta names a version
        self.dropped: set[int] = set()  # copies replaced by a newer version later in the unit
        self.drop_rows: dict[str, list[int]] = {}  # table -> rows of those copies
        self._rows: dict[str, dict[object, list[int]]] = {}  # table -> resource -> its rows (`_rows_of`) ...
        self._rows_at: dict[str, int] = {}  # ... indexed up to here
        self.counts: dict[str, Counter] = {k: Counter() for k in ("input", "loaded", "quarantined", "skipped")}
        self.reasons: Counter = Counter()

    def quarantine(
        self, source: str, rtype: str | None, rid: str | None, reason: str, detail: str, raw: object
    ) -> None:
        if not isinstance(raw, bytes | str):
            raw = orjson.dumps(raw)  # serialised only when quarantined, off the hot path
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
        append_row(self.q, source=source, resource_type=rtype, resource_id=rid, reason=reason, detail=detail,
                   raw=text)
        self.counts["quarantined"][rtype or "unknown"] += 1
        self.reasons[f"quarantined: {reason}"] += 1

    def take(self, raw: bytes, source: str | tuple[str, int], ctx: Context, fallback_id: str | None = None) -> None:
        """Decode and map one resource, keeping the unit's tables consistent if it is rejected part-way.
        `source` is a label, or (file, line), formatted only when written. A resource already in the unit is
        mapped again only if this copy is a newer version (`ingest.versions`); it then replaces the other."""
        # every mapper validates before it appends a row, so a rejected resource leaves nothing behind
        # (tests/ingest/test_quarantine.py checks this for a panel whose second component is bad)
        prior = None
        try:
            res = decode(raw)
            rid = res.id or fallback_id
            if rid:
                prior = self.live.get(f"{type(res).__name__}/{rid}")
                if prior is not None and not self._replaces(res, raw, prior):
                    return
            rows_at = old_void = None
            if prior is not None:
                rows_at = self._row_counts()
                old_void = self.batch.voided.pop((type(res).__name__, rid), None)
            try:
                rtype, rid = map_resource(res, ctx, self.batch, fallback_id)
            except (Reject, Skip) as r:
                if old_void is not None:  # the copy in place stays, withdrawn as it was
                    self.batch.voided[(type(res).__name__, rid)] = old_void
                if isinstance(r, Reject):
                    r.rtype, r.rid = type(res).__name__, res.id
                raise
        except Reject as r:
            rtype = r.rtype or "unknown"
            self.counts["input"][rtype] += 1
            where = source if isinstance(source, str) else f"{source[0]}:{source[1]}"
            self.quarantine(where, rtype, r.rid, r.reason, r.detail, raw)
            return
        except Skip as s:
            self.counts["input"][s.rtype] += 1
            self.counts["skipped"][s.rtype] += 1
            self.reasons[f"skipped: {s.rule}"] += 1
            return
        # loaded resources are counted once per unit, from `types`, when the unit is written
        key = f"{rtype}/{rid}"
        if prior is not None:
            self._drop(prior, rtype, rid, rows_at, old_void)  # type: ignore[arg-type]
        meta = res.meta
        if type(meta) is M.Meta and (meta.lastUpdated is not None or meta.versionId is not None):
            self.metas[len(self.keys)] = meta
        self.live[key] = len(self.keys)
        self.keys.append(key)
        self.types.append(rtype)
        self.content.append(content_hash(raw))
        self.sources.append(source)

    def _replaces(self, res: M.Resource, raw: bytes, prior: int) -> bool:
        """Is this copy of a resource already in the unit a newer version of it? If not it is counted skipped."""
        rtype = type(res).__name__
        if content_hash(raw) == self.content[prior]:
            why = "skipped: same Type/id again in the same batch of input, same content"
        elif not supersedes(meta_version(res.meta), meta_version(self.metas.get(prior))):
            why = "skipped: an older version of a resource already in the same batch of input (by meta)"
        else:
            return True
        self.counts["input"][rtype] += 1
        self.counts["skipped"][rtype] += 1
        self.reasons[why] += 1
        return False

    def _row_counts(self) -> dict[str, int]:
        """Rows in each table before a replacing copy is mapped (its own come after)."""
        return {"events": len(self.batch.ev)} | {t: len(getattr(self.batch, t)[c]) for t, c in _ID_COLUMN.items()}

    def _drop(self, prior: int, rtype: str, rid: str, rows_at: dict[str, int], void: str | None) -> None:
        """Take out the rows of copy `prior`, replaced by a newer version just mapped: its events and the rows of
        its type's table that name it, among those there before the new copy's (`_rows_of`); and its part in the
        report's reasons (`void`: why it was withdrawn, if it was; values it could not read)."""
        b = self.batch
        if void is not None:
            _take_back(b.void, void)
        self.dropped.add(prior)
        self.counts["input"][rtype] += 1
        self.counts["skipped"][rtype] += 1
        self.reasons["skipped: superseded by a newer version in the same batch of input"] += 1
        for table, rows in self._rows_of(rtype, rid, rows_at).items():
            self.drop_rows.setdefault(table, []).extend(rows)
            if table == "events":
                for i in rows:
                    e = b.ev[i]
                    if e[3] is None and e[6] is not None:  # as `map_observation` counted it: (code, unit)
                        _take_back(b.unconverted, (e[2], e[5]))

    def _rows_of(self, rtype: str, rid: str, rows_at: dict[str, int]) -> dict[str, list[int]]:
        """The rows naming (rtype, rid) among the first `rows_at` of each table that could hold them, through
        indexes built only once a copy is replaced and then extended, so each row is indexed once. Taken out of
        the index: the replacing copy's rows, indexed later, start entries of their own."""
        b = self.batch
        found = {}
        for table in ("events", _TABLE_OF.get(rtype)):
            if table is None:
                continue
            start = self._rows_at.get(table, 0)
            if table == "events":
                n, key = rows_at["events"], (rtype, rid)
                keys: Iterable = ((e[9], e[10]) for e in b.ev[start:n])
            else:
                cols = getattr(b, table)
                ids, types = cols[_ID_COLUMN[table]], cols.get("resource_type")
                n, key = rows_at[table], rid if types is None else (rtype, rid)
                keys = ids[start:n] if types is None else zip(types[start:n], ids[start:n], strict=True)
            index = self._rows.setdefault(table, {})
            for i, k in enumerate(keys, start):
                index.setdefault(k, []).append(i)
            self._rows_at[table] = n
            found[table] = index.pop(key, [])
        return found

    def _without_dropped(self) -> None:
        """Remove the copies replaced by newer versions, and their rows, before the unit is written."""
        keep = [i not in self.dropped for i in range(len(self.keys))]
        for name in ("keys", "types", "content", "sources"):
            setattr(self, name, [v for v, k in zip(getattr(self, name), keep, strict=True) if k])
        new_index = list(itertools.accumulate(keep, initial=0))  # old index -> index among the kept
        self.metas = {new_index[i]: m for i, m in self.metas.items() if keep[i]}
        b = self.batch
        for table, rows in self.drop_rows.items():
            gone = set(rows)
            if table == "events":
                b.ev = [e for i, e in enumerate(b.ev) if i not in gone]
            else:
                cols = getattr(b, table)
                for c, values in cols.items():
                    cols[c] = [v for i, v in enumerate(values) if i not in gone]
        self.dropped.clear()
        self.drop_rows.clear()

    def _withdrawn_column(self) -> pa.Array:
        """Why each kept copy gives no events (`mapping.void_reason`), or null: settling takes the reason back
        from the report when it removes such a copy."""
        voided = self.batch.voided
        if not voided:
            return pa.nulls(len(self.keys), pa.string())
        return pa.array([voided.get((t, k[len(t) + 1:])) for t, k in zip(self.types, self.keys, strict=True)],
                        pa.string())

    def write(self, staging: Path) -> int:
        if self.dropped:
            self._without_dropped()
        loaded = Counter(self.types)
        self.counts["loaded"].update(loaded)
        self.counts["input"].update(loaded)
        staging.mkdir(parents=True, exist_ok=True)
        hashes = np.fromiter((key_hash(k) for k in self.keys), dtype=np.int64, count=len(self.keys))
        b = self.batch
        rows = 0
        tables = (
            ("events", b.event_columns()),
            ("encounters", b.enc),
            ("patients", b.pat),
            ("notes", b.notes),
            ("directory", b.dir),
            ("quarantine", self.q),
        )
        for name, cols in tables:
            n = len(next(iter(cols.values())))
            if n:
                schema = C.TABLES[name]
                table = pa.Table.from_arrays([pa.array(cols[f.name], type=f.type) for f in schema], schema=schema)
                pq.write_table(table, staging / f"{name}.parquet", compression="zstd")
                rows += n
        if self.keys:
            table = pa.Table.from_arrays(
                [
                    pa.array(self.keys, pa.string()),
                    pa.array(hashes, pa.int64()),
                    pa.array(self.content, pa.int64()),
                    *_source_columns(self.sources),
                    pa.array([self.uid] * len(self.keys), pa.string()),
                    *_meta_columns(self.metas, len(self.keys)),
                    self._withdrawn_column(),
                ],
                schema=C.RESOURCES,
            )
            pq.write_table(table, staging / "resources.parquet", compression="zstd")
        return rows


def _take_back(counter: Counter, key: object) -> None:
    """Uncount one `key` (a replaced copy's), leaving no zero behind for the report."""
    counter[key] -= 1
    if not counter[key]:
        del counter[key]


def _meta_columns(metas: dict[int, M.Meta], n: int) -> tuple[pa.Array, pa.Array]:
    """(last_updated, version_id) columns of the resource index: the strings as sent, null when absent or not
    a string."""
    def strings(field: str) -> pa.Array:
        if not metas:
            return pa.nulls(n, pa.string())
        values: list[object] = [None] * n
        for i, m in metas.items():
            values[i] = getattr(m, field)
        return pa.array([v if isinstance(v, str) else None for v in values], pa.string())

    return strings("lastUpdated"), strings("versionId")


def _source_columns(sources: list[str | tuple[str, int]]) -> tuple[pa.Array, pa.Array]:
    """(source, line) columns of the resource index. An NDJSON unit is a slice of one file, so its sources are
    (that file, line) pairs; a Bundle or REST unit gives labels."""
    if sources and isinstance(sources[0], tuple):
        lines = pa.array([s[1] for s in sources], pa.int64())  # type: ignore[index]
        return pa.repeat(pa.scalar(sources[0][0], pa.string()), len(sources)), lines
    return pa.array(sources, pa.string()), pa.nulls(len(sources), pa.int64())


@dataclass
class _BadEntry:
    """A Bundle entry that is not a valid entry (`fullUrl` not a string, `request` not an object, ...)."""

    raw: bytes
    error: str
    rtype: str | None = None
    rid: str | None = None


_STORE_MEDICATIONS: Mapping[str, tuple[str, ...]] = {}  # the store's Medications (`runner.store_medications`)
_medication_decoder = msgspec.json.Decoder(M.Medication)


def use_medications(medications: Mapping[str, tuple[str, ...]]) -> None:
    """Let this process's units resolve medicationReferences to these Medications (id -> known codes): those in the
    store when the run began mapping requests. Set in the parent before the worker pool starts, and by the pool's
    initializer in each worker."""
    global _STORE_MEDICATIONS
    _STORE_MEDICATIONS = medications


def _context() -> Context:
    """A unit's reference context: the store's Medications, and any the unit itself defines (written over them)."""
    return Context(medications=ChainMap({}, _STORE_MEDICATIONS))


def _bundle_context(entries: list[M.Entry | _BadEntry]) -> tuple[Context, list[M.Head | None]]:
    """Where a Bundle's references point: fullUrls and identifiers of its own entries, and its Medications' codes
    (a request may come before the Medication it names)."""
    ctx = _context()
    heads: list[M.Head | None] = []
    for e in entries:
        head = None
        if isinstance(e, M.Entry) and e.resource:
            try:
                head = M.head_decoder.decode(e.resource)
            except msgspec.DecodeError:
                head = None
        heads.append(head)
        if head is None or not isinstance(head.resourceType, str):
            continue
        rtype = head.resourceType
        rid = head.id if isinstance(head.id, str) else _uuid_of(e.fullUrl)
        if not rid:
            continue
        if e.fullUrl:
            ctx.full_urls[e.fullUrl] = (rtype, rid)
        if rtype == "Medication":
            try:
                med = _medication_decoder.decode(e.resource)
            except msgspec.DecodeError:
                pass  # quarantined with its reason when taken; a request naming it does not resolve
            else:
                ctx.medications[rid] = medication_definition(med)
        if isinstance(head.identifier, list):
            for ident in head.identifier:
                if isinstance(ident, dict) and ident.get("system") and ident.get("value"):
                    ctx.conditional[f"{rtype}?identifier={ident['system']}|{ident['value']}"] = (rtype, rid)
    return ctx, heads


def _uuid_of(full_url: str | None) -> str | None:
    if full_url and full_url.startswith("urn:uuid:"):
        return full_url[9:]
    return None


def _take_bundle(col: _Collector, entries: list[M.Entry | _BadEntry], label: str) -> None:
    ctx, heads = _bundle_context(entries)
    for i, (e, head) in enumerate(zip(entries, heads, strict=True)):
        src = f"{label}#entry[{i}]"
        if isinstance(e, _BadEntry):
            col.counts["input"][e.rtype or "unknown"] += 1
            col.quarantine(src, e.rtype, e.rid, "invalid value", f"Bundle entry: {e.error}"[:200], e.raw)
            continue
        rtype = head.resourceType if head is not None and isinstance(head.resourceType, str) else "unknown"
        if (e.request or {}).get("method") == "DELETE":
            col.counts["input"][rtype] += 1
            col.counts["skipped"][rtype] += 1
            col.reasons["skipped: DELETE entry"] += 1
            continue
        if (e.search or {}).get("mode") == "outcome":
            col.counts["input"][rtype] += 1
            col.counts["skipped"][rtype] += 1
            col.reasons["skipped: search outcome message"] += 1
            continue
        if not e.resource:
            col.counts["input"]["unknown"] += 1
            col.quarantine(src, None, None, "not a FHIR resource", "entry without resource", msgspec.json.encode(e))
            continue
        col.take(bytes(e.resource), src, ctx, _uuid_of(e.fullUrl))


_SINGLE = "single"  # `_entries`: not a Bundle, to be read as one resource
_DONE = "done"  # `_entries`: quarantined whole


def _entries(col: _Collector, data: bytes, label: str) -> list[M.Entry | _BadEntry] | str:
    """A Bundle's entries, each malformed one kept to be quarantined on its own; `_SINGLE` when `data` is not a
    Bundle (the caller reads it as one resource), `_DONE` when it was quarantined whole (not JSON; a Bundle whose
    `entry` is not a list)."""
    try:
        bundle = M.bundle_decoder.decode(data)
    except msgspec.ValidationError:  # a subclass of DecodeError, so caught first: the JSON itself is valid
        bundle = None
    except msgspec.DecodeError as exc:  # not JSON at all
        col.counts["input"]["unknown"] += 1
        col.quarantine(label, None, None, "unparseable JSON", str(exc)[:200], data)
        return _DONE
    if bundle is not None:
        return bundle.entry if bundle.resourceType == "Bundle" else _SINGLE
    try:
        head = M.head_decoder.decode(data)
    except msgspec.DecodeError:
        return _SINGLE  # not an object: the resource decoder says so
    if head.resourceType != "Bundle":
        return _SINGLE
    try:
        raw = M.raw_bundle_decoder.decode(data)
    except msgspec.DecodeError as exc:
        col.counts["input"]["Bundle"] += 1
        col.quarantine(label, "Bundle", None, "invalid value", str(exc)[:200], data)
        return _DONE
    entries: list[M.Entry | _BadEntry] = []
    for item in raw.entry:
        try:
            entries.append(M.entry_decoder.decode(item))
        except msgspec.DecodeError as exc:
            bad = _BadEntry(bytes(item), str(exc))
            try:
                head = M.entry_head_decoder.decode(item).resource
            except msgspec.DecodeError:
                head = None
            if head is not None and isinstance(head.resourceType, str):
                bad.rtype, bad.rid = head.resourceType, head.id if isinstance(head.id, str) else None
            entries.append(bad)
    return entries


def _read_bytes(path: str) -> bytes:
    data = Path(path).read_bytes()
    return (gzip.decompress(data) if path.endswith(".gz") else data).removeprefix(_BOM)


def _bundle_file(col: _Collector, path: str) -> None:
    try:
        data = _read_bytes(path)
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        col.counts["input"]["unknown"] += 1
        col.quarantine(path, None, None, "unparseable JSON", f"cannot read: {exc}"[:200], f"<unreadable file {path}>")
        return
    entries = _entries(col, data, path)
    if isinstance(entries, list):
        _take_bundle(col, entries, path)
    elif entries == _SINGLE:
        col.take(data, path, _context())  # a file holding one resource (an Encounter, a Coverage, ...)


def void_text(why: str) -> str:
    """The report's reason for a resource loaded without events (`mapping.void_reason`)."""
    return f"loaded without events: {why}"


def unread_text(code: str, sent: str) -> str:
    """The report's reason for a value kept as sent, in a unit with no conversion to its code's."""
    return (f"loaded, value not read: {code} in {sent[:24]!r}, no conversion to "
            f"{CANONICAL_UNITS[code.removeprefix('LOINC/')]}")


def process_unit(unit: Unit, staging_root: str) -> UnitResult:
    """Map one unit into staged Parquet parts under `staging_root/<uid>/`."""
    t0 = time.perf_counter()
    gc.disable()  # the unit's buffers hold no reference cycles; collection passes only cost time
    try:
        return _process_unit(unit, staging_root, t0)
    finally:
        gc.enable()


def _process_unit(unit: Unit, staging_root: str, t0: float) -> UnitResult:
    col = _Collector(unit.uid)
    if unit.kind == "ndjson":
        ctx = _context()
        take = col.take
        label = unit.label
        first = unit.first_line
        for i, line in enumerate(unit.data.split(b"\n")):
            if line and not line.isspace():
                take(line, (label, first + i), ctx)
    elif unit.kind == "bundles":
        for path in unit.paths:
            _bundle_file(col, path)
    elif unit.kind == "page":
        entries = _entries(col, unit.data, unit.label)
        if isinstance(entries, list):  # a page is a searchset Bundle (`rest.fetch_bundle` checks)
            _take_bundle(col, entries, unit.label)
    for why, n in col.batch.void.items():  # loaded (they replace earlier versions) but mapped to no events
        col.reasons[void_text(why)] += n
    for (code, sent), n in col.batch.unconverted.items():  # loaded; the number kept as sent, never read
        col.reasons[unread_text(code, sent)] += n
    rows = col.write(Path(staging_root) / unit.uid)
    return UnitResult(unit.uid, unit.label, col.counts, col.reasons, time.perf_counter() - t0, rows)


# --- enumerating units ---------------------------------------------------------------------------


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _inflater():
    """A gzip decompressor: ISA-L's (about 1.5x faster, same format) when installed, else zlib's."""
    try:
        from isal import isal_zlib

        return isal_zlib.decompressobj(31)
    except ImportError:  # pragma: no cover - isal is a declared dependency; zlib is the fallback
        return zlib.decompressobj(47)


_BOM = b"\xef\xbb\xbf"  # a UTF-8 byte order mark, which some Windows tools write at the start of a file


def ndjson_lines(path: Path) -> Iterator[bytes]:
    """Decompressed content in blocks that end on a line boundary (multi-member gzip allowed), without a byte
    order mark at the start (it would make the first line unparseable)."""
    first = True
    for block in _ndjson_blocks(path):
        if first:
            first = False
            block = block.removeprefix(_BOM)
        yield block


def _ndjson_blocks(path: Path) -> Iterator[bytes]:
    gz = path.name.endswith(".gz")
    with open(path, "rb") as f:
        d = _inflater() if gz else None
        tail = b""
        while True:
            block = f.read(1 << 20)
            if not block:
                break
            if d is not None:
                out = d.decompress(block)
                while d.unused_data:
                    rest = d.unused_data
                    d = _inflater()
                    out += d.decompress(rest)
            else:
                out = block
            data = tail + out
            cut = data.rfind(b"\n")
            if cut < 0:
                tail = data
                continue
            tail = data[cut + 1 :]
            yield data[: cut + 1]
        if d is not None:
            tail += d.flush()
        if tail:
            yield tail


def ndjson_units(path: Path, digest: str, chunk_bytes: int | None = None) -> Iterator[Unit]:
    """Slices of about `chunk_bytes` decompressed bytes, cut at line ends; ids from the file digest and the
    slice number. The parent only finds cut points and counts lines (both in C): workers do the parsing."""
    chunk_bytes = chunk_bytes or NDJSON_CHUNK_BYTES
    pending: list[bytes] = []
    size = 0
    first = 1
    k = 0
    for block in ndjson_lines(path):
        pending.append(block)
        size += len(block)
        if size >= chunk_bytes:
            data = b"".join(pending)
            yield Unit(f"{digest[:24]}-{k:05d}", "ndjson", path.name, data, first)
            first += data.count(b"\n")
            k += 1
            pending, size = [], 0
    if pending:
        yield Unit(f"{digest[:24]}-{k:05d}", "ndjson", path.name, b"".join(pending), first)
