"""The event store: MEDS-compatible Parquet tables in one directory, with a DuckDB catalog over them.

    STORE/events/part-*.parquet       MEDS events (see careloop.contracts.EVENTS)
    STORE/encounters/, patients/, notes/, directory/, quarantine/, resources/
    STORE/catalog.duckdb              views over the Parquet (encounters resolve their site through directory)
    STORE/_ledger/                    one record per committed unit of ingest work
    STORE/_format                     the parts' format (`FORMAT`); an older store is upgraded by its next ingest
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb

from careloop import contracts as C
from careloop.errors import CareloopError

TABLE_DIRS = ("events", "encounters", "patients", "notes", "directory", "quarantine", "resources")
KEYS = {  # how each table names the resource a row came from: (type column or literal type, id column)
    "events": ("source_resource", "source_id"),
    "encounters": ("Encounter", "encounter_id"),
    "patients": ("Patient", "patient_id"),
    "notes": ("DocumentReference", "note_id"),
    "directory": ("resource_type", "resource_id"),
}


FORMAT = 4  # of the parts on disk (`upgrade`); 2: the resource index has last_updated, version_id, withdrawn;
# 3: the directory has a Medication's code; 4: encounters have diagnosis_ref


class StoreError(CareloopError):
    """The store directory is missing, locked by another run, or not a careloop store."""


# The descriptors of the store locks this process holds (`EventStore.lock`). A process forked meanwhile (an ingest
# worker) closes its copies at once: a flock belongs to the open file, so a copy left open in a child would keep the
# store locked for as long as the child lived, even after the writer itself had died.
_HELD_LOCKS: set[int] = set()


def _close_inherited_locks() -> None:
    for fd in _HELD_LOCKS:
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD_LOCKS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_inherited_locks)


# Views over the raw tables that every engine creates the same way (plain SQL both DuckDB and Spark speak):
# `encounters` resolves its site, written as Organization/<id> or Organization?identifier=system|value.
RESOLVED_VIEWS = (
    """CREATE OR REPLACE TEMP VIEW directory_keys AS
       SELECT DISTINCT resource_type, resource_id, name,
              concat(resource_type, '?identifier=', identifier_system, '|', identifier_value) AS cond_ref
       FROM directory""",
    """CREATE OR REPLACE TEMP VIEW encounters AS
       SELECT e.*,
              coalesce(CASE WHEN e.site_ref LIKE 'Organization/%' THEN split_part(e.site_ref, '/', 2) END,
                       s.resource_id) AS site_id,
              coalesce(s.name, s2.name) AS site_name
       FROM encounters_raw e
       LEFT JOIN (SELECT DISTINCT cond_ref, resource_id, name FROM directory_keys
                  WHERE resource_type = 'Organization') s ON s.cond_ref = e.site_ref
       LEFT JOIN (SELECT DISTINCT resource_id, name FROM directory_keys
                  WHERE resource_type = 'Organization') s2
              ON e.site_ref = concat('Organization/', s2.resource_id)""",
)


def _empty_select(schema) -> str:
    cols = ", ".join(f"CAST(NULL AS {_duck_type(f.type)}) AS \"{f.name}\"" for f in schema)
    return f"SELECT {cols} WHERE FALSE"


def _duck_type(t) -> str:
    s = str(t)
    return {"int64": "BIGINT", "string": "VARCHAR", "double": "DOUBLE", "date32[day]": "DATE",
            "timestamp[us, tz=UTC]": "TIMESTAMPTZ", "int32": "INTEGER", "bool": "BOOLEAN"}[s]


@dataclass
class EventStore:
    root: Path

    @classmethod
    def create(cls, root: Path) -> EventStore:
        root = Path(root)
        if root.exists() and not root.is_dir():
            raise StoreError(f"--store: {root} exists and is not a directory")
        new = not (root / "_ledger").is_dir()
        for d in (*TABLE_DIRS, "_ledger", "_journal", ".staging"):
            (root / d).mkdir(parents=True, exist_ok=True)
        store = cls(root)
        if new:
            store._write_format()
        return store

    @classmethod
    def open(cls, root: Path | str) -> EventStore:
        root = Path(root)
        if not (root / "_ledger").is_dir():
            raise StoreError(f"{root} is not a careloop event store (no _ledger/); run `careloop ingest` first")
        return cls(root)

    @property
    def ledger(self) -> Path:
        return self.root / "_ledger"

    @property
    def staging(self) -> Path:
        return self.root / ".staging"

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """One writer at a time; a second `careloop ingest` on the same store stops with a clear error."""
        fd = os.open(self.root / ".lock", os.O_CREAT | os.O_RDWR, 0o644)
        _HELD_LOCKS.add(fd)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise StoreError(f"{self.root} is being written by another careloop process") from None
            yield
        finally:
            _HELD_LOCKS.discard(fd)
            os.close(fd)

    @property
    def journal(self) -> Path:
        return self.root / "_journal"

    def remove_resources(self, unit: str, keys: set[str]) -> None:
        """Drop every row of the given resources from one committed unit's parts (an update replaces them).
        Idempotent, and each part is replaced atomically, so an interrupted removal can simply be re-run."""
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        drop = pa.array(sorted(keys))
        for table in (*KEYS, "resources"):
            part = self.root / table / f"part-{unit}.parquet"
            if not part.exists():
                continue
            t = pq.read_table(part)
            if table == "resources":
                key = t.column("resource_key")
            else:
                a, b = KEYS[table]
                rtype = t.column(a) if a in t.column_names else pa.array([a] * t.num_rows)
                key = pc.binary_join_element_wise(rtype, t.column(b), "/")
            mask = pc.is_in(key, drop)
            if not pc.any(mask).as_py():
                continue
            tmp = part.with_suffix(".tmp")
            pq.write_table(t.filter(pc.invert(mask)), tmp, compression="zstd")
            os.replace(tmp, part)

    def apply_journal(self) -> None:
        """Finish removals that a killed run had promised (see `remove_resources`)."""
        import orjson

        for entry in sorted(self.journal.glob("*.json")):
            if entry.name == "settled.json":  # a marker, not a promise
                continue
            for unit, keys in orjson.loads(entry.read_bytes()).items():
                self.remove_resources(unit, set(keys))
            entry.unlink()

    def upgrade(self) -> int:
        """Bring parts written by an older careloop to the contracts' schemas (a column added since is null in
        them), so that every part of a table reads alike; once per store (`FORMAT`, in `_format`), under the
        writer lock. Each part is replaced atomically, so an interrupted upgrade is simply redone. Returns how
        many parts were rewritten."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        marker = self.root / "_format"
        if marker.exists() and marker.read_text().strip() == str(FORMAT):
            return 0
        rewritten = 0
        for table in TABLE_DIRS:
            schema = C.TABLES[table]
            for part in self.parts(table):
                missing = [f for f in schema if f.name not in pq.read_schema(part).names]
                if not missing:
                    continue
                t = pq.read_table(part)
                for f in missing:
                    t = t.append_column(f, pa.nulls(t.num_rows, f.type))
                tmp = part.with_suffix(".tmp")
                pq.write_table(t.select(schema.names), tmp, compression="zstd")
                os.replace(tmp, part)
                rewritten += 1
        self._write_format()
        return rewritten

    def _write_format(self) -> None:
        tmp = self.root / ".format.tmp"
        tmp.write_text(f"{FORMAT}\n")
        os.replace(tmp, self.root / "_format")

    def recover(self) -> int:
        """Undo what an interrupted run left half-done: staged units, and parts whose ledger was never written;
        finish promised removals of superseded resources. Upgrades a store written by an older careloop first."""
        self.upgrade()
        self.journal.mkdir(exist_ok=True)
        self.apply_journal()
        shutil.rmtree(self.staging, ignore_errors=True)
        self.staging.mkdir()
        done = {p.stem for p in self.ledger.glob("*.json")}
        removed = 0
        for table in TABLE_DIRS:
            for part in (self.root / table).glob("part-*.parquet"):
                if part.stem[5:] not in done:
                    part.unlink()
                    removed += 1
        for tmp in self.ledger.glob(".*.tmp"):
            tmp.unlink()
        return removed

    def parts(self, table: str) -> list[Path]:
        return sorted((self.root / table).glob("part-*.parquet"))

    def current_format(self) -> bool:
        """Are the parts in this careloop's format (`FORMAT`)? A store written by an older careloop is upgraded by
        its next ingest; until then it is read with the columns added since as nulls (`_source`)."""
        marker = self.root / "_format"
        return marker.exists() and marker.read_text().strip() == str(FORMAT)

    def _source(self, table: str) -> str:
        parts = self.parts(table)
        schema = C.TABLES[table]
        if not parts:
            return _empty_select(schema)
        glob = (self.root / table).resolve() / "part-*.parquet"
        if self.current_format():
            return f"SELECT * FROM read_parquet('{glob}')"
        source = f"read_parquet('{glob}', union_by_name = true)"  # parts of several formats side by side
        have = {row[0] for row in duckdb.sql(f"DESCRIBE SELECT * FROM {source}").fetchall()}
        cols = ", ".join(f'"{f.name}"' if f.name in have else f'CAST(NULL AS {_duck_type(f.type)}) AS "{f.name}"'
                         for f in schema)
        return f"SELECT {cols} FROM {source}"

    def connect(self, database: str | Path = ":memory:", *, read_only: bool = False) -> duckdb.DuckDBPyConnection:
        """A DuckDB connection with one view per table (and `encounters` with its site resolved)."""
        con = duckdb.connect(str(database), read_only=read_only)
        con.execute("SET TimeZone = 'UTC'")
        if not read_only:
            self._create_views(con)
        return con

    def _create_views(self, con: duckdb.DuckDBPyConnection) -> None:
        for table in TABLE_DIRS:
            name = "encounters_raw" if table == "encounters" else table
            con.execute(f"CREATE OR REPLACE VIEW {name} AS {self._source(table)}")
        for sql in RESOLVED_VIEWS:  # persistent views here, so catalog.duckdb keeps them for users
            con.execute(sql.replace("TEMP VIEW", "VIEW"))

    def refresh_catalog(self) -> None:
        """Rewrite `catalog.duckdb` so a user can open it with the duckdb CLI and query the views."""
        path = self.root / "catalog.duckdb"
        tmp = self.root / ".catalog.duckdb.tmp"
        if tmp.exists():
            tmp.unlink()
        con = duckdb.connect(str(tmp))
        try:
            self._create_views(con)
        finally:
            con.close()
        os.replace(tmp, path)


def info(store: EventStore) -> dict:
    """What is in a store: counts by table and code system, date ranges, top codes, quarantine summary."""
    con = store.connect()
    try:
        tables = {t: con.execute(f"SELECT count(*) FROM {'encounters_raw' if t == 'encounters' else t}").fetchone()[0]
                  for t in TABLE_DIRS}
        systems = dict(con.execute(
            "SELECT split_part(code, '/', 1) AS s, count(*) FROM events GROUP BY 1 ORDER BY 2 DESC").fetchall())
        lo, hi = con.execute("SELECT min(time), max(time) FROM events WHERE code NOT IN ('MEDS_BIRTH')").fetchone()
        top = [{"code": c, "events": n, "numeric": k} for c, n, k in con.execute(
            "SELECT code, count(*), count(numeric_value) FROM events GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 15"
        ).fetchall()]
        enc = dict(con.execute("SELECT class, count(*) FROM encounters_raw GROUP BY 1 ORDER BY 2 DESC").fetchall())
        erange = con.execute("SELECT min(start), max(start) FROM encounters_raw").fetchone()
        quarantine = dict(con.execute(
            "SELECT reason, count(*) FROM quarantine GROUP BY 1 ORDER BY 2 DESC").fetchall())
        subjects = con.execute("SELECT count(DISTINCT subject_id) FROM events").fetchone()[0]
        units = con.execute("SELECT 1").fetchone() and len(list(store.ledger.glob("*.json")))
    finally:
        con.close()

    def iso(x):
        return None if x is None else x.isoformat()

    return {
        "store": str(store.root), "subjects": subjects, "tables": tables, "events_by_system": systems,
        "event_time_range": [iso(lo), iso(hi)], "encounters_by_class": enc,
        "encounter_start_range": [iso(erange[0]), iso(erange[1])], "top_codes": top,
        "quarantine_by_reason": quarantine, "ledger_records": units,
    }
