"""Features at the bedside from prefetched FHIR, by the very code that made the training features.

The prefetched resources go through the ingest mapping (`careloop.ingest.mapping`: the same units, codes and
quarantine rules as the event store), into in-memory tables with the store's names, and the feature set's SQL runs on
them through DuckDB (`careloop.engines.ArrowEngine`): there is no second implementation to drift from the first.
Resources about another patient are not used (and are reported), nor are OperationOutcomes.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import threading
from dataclasses import dataclass, field

import orjson
import pyarrow as pa

from careloop import contracts as C
from careloop.engines import ArrowEngine
from careloop.features.engine import extract
from careloop.features.spec import FeatureSet
from careloop.ingest.mapping import Batch, Context, Reject, Skip, decode, map_resource

PREFETCH = {  # CDS Hooks prefetch templates: what the readmission features read, for one patient
    "patient": "Patient/{{context.patientId}}",
    "encounters": "Encounter?patient={{context.patientId}}",
    "conditions": "Condition?patient={{context.patientId}}",
    "observations": "Observation?patient={{context.patientId}}",
    "medications": "MedicationRequest?patient={{context.patientId}}",
    "procedures": "Procedure?patient={{context.patientId}}",
    "coverage": "Coverage?beneficiary={{context.patientId}}",
}
REQUIRED_KEYS = ("patient", "encounters")  # without these there is no index stay to score
_PATIENT_REFS = ("subject", "patient", "beneficiary")


@dataclass
class Prefetched:
    """The usable resources of a request, and what was set aside and why (for the audit log)."""

    resources: list[dict] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # keys absent or null
    outcomes: list[str] = field(default_factory=list)  # keys answered with an OperationOutcome
    foreign: int = 0  # resources about another patient (not used)
    rejected: list[str] = field(default_factory=list)  # resources the mapping refused, with the reason

    def digest(self) -> str:
        """SHA-256 of the resources used, in a canonical order: audit records carry this, never the data."""
        h = hashlib.sha256()
        for raw in sorted(orjson.dumps(r, option=orjson.OPT_SORT_KEYS) for r in self.resources):
            h.update(raw)
        return h.hexdigest()


def fetch_prefetch(
    fhir_server: str,
    access_token: str,
    patient_id: str,
    keys: list[str],
    *,
    timeout: float = 1.5,
    max_pages: int = 20,
    client=None,
) -> dict:
    """What the EHR did not prefetch, read from its FHIR server with the token it gave (never logged or kept).
    A key that fails is left out, so the request defers rather than scoring on partial data."""
    import httpx

    base = fhir_server.rstrip("/")
    headers = {"Authorization": f"Bearer {access_token}", "Accept": "application/fhir+json"}
    out: dict = {}
    own = client is None
    client = client or httpx.Client(timeout=timeout, follow_redirects=False)
    try:
        for key in keys:
            url = f"{base}/" + PREFETCH[key].replace("{{context.patientId}}", patient_id)
            try:
                first = client.get(url, headers=headers)
                if first.status_code != 200:
                    continue
                doc = first.json()
                entries = list(doc.get("entry") or []) if doc.get("resourceType") == "Bundle" else None
                pages = 1
                while entries is not None and pages < max_pages:
                    nxt = next((lk.get("url") for lk in doc.get("link") or [] if lk.get("relation") == "next"), None)
                    if not nxt or not str(nxt).startswith(base):  # never follow a link off the EHR's server
                        break
                    doc = client.get(nxt, headers=headers).json()
                    entries += doc.get("entry") or []
                    pages += 1
                out[key] = (
                    {"resourceType": "Bundle", "type": "searchset", "entry": entries} if entries is not None else doc
                )
            except (httpx.HTTPError, ValueError):
                continue
    finally:
        if own:
            client.close()
    return out


def _entries(value: object) -> list[dict] | None:
    """A prefetch value's resources: a resource, or a Bundle's entries (None for an OperationOutcome)."""
    if not isinstance(value, dict):
        return []
    if value.get("resourceType") == "OperationOutcome":
        return None
    if value.get("resourceType") == "Bundle":
        out = []
        entries = value.get("entry") or []
        for e in entries if isinstance(entries, list) else []:
            r = e.get("resource") if isinstance(e, dict) else None
            if isinstance(r, dict):
                if r.get("resourceType") == "OperationOutcome":
                    continue  # search warnings ride along as entries with mode "outcome"
                out.append(r)
        return out
    return [value]


def _about(resource: dict, patient_id: str) -> bool:
    """Does this resource belong to the patient (or to no patient at all, like a Location)?"""
    if resource.get("resourceType") == "Patient":
        return resource.get("id") == patient_id
    for key in _PATIENT_REFS:
        ref = resource.get(key)
        if isinstance(ref, dict) and isinstance(ref.get("reference"), str):
            return ref["reference"].rsplit("/", 1)[-1] == patient_id
    return True


def collect(prefetch: dict | None, patient_id: str, keys: tuple[str, ...] = tuple(PREFETCH)) -> Prefetched:
    """Gather the prefetched resources about `patient_id`, de-duplicated by type and id."""
    out = Prefetched()
    seen: set[tuple[str, str]] = set()
    prefetch = prefetch or {}
    for key in keys:
        if key not in prefetch or prefetch[key] is None:
            out.missing.append(key)
            continue
        items = _entries(prefetch[key])
        if items is None:
            out.outcomes.append(key)
            continue
        for r in items:
            ident = (str(r.get("resourceType")), str(r.get("id")))
            if ident in seen:
                continue
            seen.add(ident)
            if not _about(r, patient_id):
                out.foreign += 1
                continue
            try:
                orjson.dumps(r)  # e.g. an integer beyond 64 bits: not a resource the mapping can read
            except (TypeError, orjson.JSONEncodeError):
                out.rejected.append(f"{ident[0]}: not serialisable JSON")
                continue
            out.resources.append(r)
    return out


def to_tables(resources: list[dict], directory: pa.Table | None = None) -> tuple[dict[str, pa.Table], list[str]]:
    """Map FHIR resources into the store's tables with the ingest mapping; (tables, rejection reasons)."""
    batch, ctx, rejected = Batch(), Context(), []
    for r in resources:
        try:
            map_resource(decode(orjson.dumps(r)), ctx, batch)
        except Reject as e:
            rejected.append(f"{r.get('resourceType')}: {e.reason}")
        except Skip:
            continue
    cols = {
        "events": batch.event_columns(),
        "encounters": batch.enc,
        "patients": batch.pat,
        "notes": batch.notes,
        "directory": batch.dir,
    }
    tables = {}
    for name, data in cols.items():
        schema = C.TABLES[name]
        tables[name] = pa.Table.from_arrays([pa.array(data[f.name], type=f.type) for f in schema], schema=schema)
    if directory is not None and directory.num_rows:
        tables["directory"] = pa.concat_tables(
            [directory.select(C.DIRECTORY.names).cast(C.DIRECTORY), tables["directory"]]
        )
    return tables, rejected


_local = threading.local()


def _engine() -> ArrowEngine:
    """This thread's DuckDB connection (each request thread reuses its own)."""
    eng = getattr(_local, "engine", None)
    if eng is None:
        eng = _local.engine = ArrowEngine()
    return eng


@dataclass
class BedsideFeatures:
    row: pa.Table | None  # one row of features, or None when the stay cannot be scored
    reason: str | None  # why not, for the deferral card and the audit log
    index_time: dt.datetime | None = None
    age: float | None = None
    encounter_class: str | None = None


def bedside_features(
    fs: FeatureSet,
    pre: Prefetched,
    patient_id: str,
    encounter_id: str | None,
    *,
    directory: pa.Table | None = None,
    now: dt.datetime | None = None,
) -> BedsideFeatures:
    """The index stay's features at discharge: its end time if recorded, else `now` (the discharge is happening)."""
    tables, rejected = to_tables(pre.resources, directory)
    pre.rejected = rejected
    enc = tables["encounters"]
    ids = enc.column("encounter_id").to_pylist()
    if not ids:
        return BedsideFeatures(None, "no encounter for the patient in the prefetched data")
    if encounter_id is None:  # patient-view: the latest inpatient stay
        imp = [i for i, c in enumerate(enc.column("class").to_pylist()) if c == "IMP"]
        if not imp:
            return BedsideFeatures(None, "no inpatient stay to score")
        starts = enc.column("start").to_pylist()
        j = max(imp, key=lambda i: starts[i])
    elif encounter_id in ids:
        j = ids.index(encounter_id)
    else:
        return BedsideFeatures(None, "the context's encounter is not in the prefetched data")
    row = {k: enc.column(k)[j].as_py() for k in ("encounter_id", "subject_id", "patient_id", "class", "start", "end")}
    if row["start"] is None:
        return BedsideFeatures(None, "the index stay has no admission time", encounter_class=row["class"])
    now = now or dt.datetime.now(dt.UTC)
    index_time = row["end"] if row["end"] is not None and row["end"] <= now else now
    cohort = pa.table(
        {
            "encounter_id": [row["encounter_id"]],
            "patient_id": [row["patient_id"]],
            "subject_id": pa.array([row["subject_id"]], pa.int64()),
            "index_time": pa.array([index_time], C.TIME),
            "admit_time": pa.array([row["start"]], C.TIME),
            "label": pa.array([None], pa.bool_()),
            "split": ["serve"],
        }
    )
    engine = _engine()
    engine.load(tables)
    try:
        out = extract(fs, cohort, engine).table
    finally:
        engine.load({})  # drop this patient's tables from the connection
    age = out.column("age")[0].as_py() if "age" in out.column_names else None
    return BedsideFeatures(out, None, index_time, age, row["class"])
