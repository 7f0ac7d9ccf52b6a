"""Write the synthetic hospital: Bulk Data NDJSON, per-patient Bundles, and the ground truth.

Patients are cut into fixed-size shards. A worker simulates and renders one shard, writes its patients'
Bundles, and returns one gzip member per resource type; the parent appends the members in shard order
(a multi-member gzip file is a valid gzip file). Shards, not workers, decide the bytes, so the output is
byte-identical for any worker count, and memory holds a few shards, never the population.

Everything is written under `OUT/.synth-staging/` and moved into place only when complete: a failed or
interrupted run leaves no partial `ndjson/`, `bundles/` or `truth/`.
"""

from __future__ import annotations

import datetime as dt
import gzip
import multiprocessing as mp
import os
import re
import shutil
import zlib
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from careloop import __version__
from careloop.synth import mechanism
from careloop.synth import vocab as V
from careloop.synth.config import SynthConfig
from careloop.synth.fhir import Renderer
from careloop.synth.sim import _ts, simulate
from careloop.synth.updates import write_updates
from careloop.synth.world import World, build_world

RESOURCE_ORDER = ("Organization", "Location", "Practitioner", "Patient", "Coverage", "Encounter", "Condition",
                  "Observation", "MedicationRequest", "Procedure", "DocumentReference")
NDJSON_LEVEL = 3
BUNDLE_LEVEL = 1

STAY_SCHEMA = pa.schema([
    ("encounter_id", pa.string()), ("patient_id", pa.string()), ("site", pa.string()),
    ("admit_time", pa.timestamp("us", tz="UTC")), ("discharge_time", pa.timestamp("us", tz="UTC")),
    ("principal_diagnosis", pa.string()), ("elective", pa.bool_()), ("disposition", pa.string()),
    ("true_risk_30d", pa.float64()), ("readmitted_30d", pa.bool_()), ("censored_30d", pa.bool_()),
    ("died_in_hospital", pa.bool_()), ("true_risk_death", pa.float64()), ("clinician_risk_30d", pa.float64()),
    ("note_signal", pa.bool_()),
])
PATIENT_SCHEMA = pa.schema([
    ("patient_id", pa.string()), ("site", pa.string()), ("frailty", pa.float64()),
    ("chronic_true", pa.int32()), ("chronic_recorded", pa.int32()), ("under_recorded", pa.bool_()),
    ("case_mix_shifted", pa.bool_()), ("death_time", pa.timestamp("us", tz="UTC")),
])


@dataclass
class ShardResult:
    index: int
    members: dict[str, bytes]
    counts: Counter
    stays: list[tuple]
    patients: list[tuple]
    bundle_bytes: int


@dataclass
class SynthResult:
    """What was written, for the CLI summary and for tests."""

    out: Path
    patients: int
    counts: dict[str, int]
    bytes_written: int
    stays: int
    readmission_rate: float
    inhospital_mortality: float
    by_site: dict[str, dict[str, float]] = field(default_factory=dict)
    updates: dict[str, dict[str, int]] = field(default_factory=dict)  # per night: how many of each change

    def to_json(self) -> dict:
        return {"updates": self.updates, "out": str(self.out), "patients": self.patients, "resources": self.counts,
                "resources_total": sum(self.counts.values()), "bytes_written": self.bytes_written,
                "inpatient_stays": self.stays, "readmission_rate_30d": self.readmission_rate,
                "inhospital_mortality": self.inhospital_mortality, "by_site": self.by_site}


# --- Bundle references ---------------------------------------------------------------------------

_LOCAL_REF = re.compile(
    rb'"reference":"(?:Patient|Encounter|Condition|Observation|MedicationRequest|Procedure|DocumentReference|'
    rb'Coverage)/')
_SHARED_REF = re.compile(rb'"reference":"((?:Practitioner|Organization|Location)/[0-9a-f-]{36})"')


def conditional_refs(world: World) -> dict[bytes, bytes]:
    """Shared resources are referenced by identifier in Bundles, as newer Synthea writes them."""
    out: dict[bytes, bytes] = {}
    for docs in world.practitioners.values():
        for d in docs:
            out[f"Practitioner/{d.id}".encode()] = f"Practitioner?identifier={V.NPI}|{d.npi}".encode()
    for s in world.sites:
        out[f"Organization/{s.id}".encode()] = f"Organization?identifier={V.NPI}|{s.npi}".encode()
        for code, wid in s.ward_ids.items():
            out[f"Location/{wid}".encode()] = f"Location?identifier={V.LOC_ID_SYSTEM}|{s.key}-{code}".encode()
    out[f"Organization/{world.system_org_id}".encode()] = (
        f"Organization?identifier={V.ORG_ID_SYSTEM}|careloop-health".encode())
    for p in world.payers.values():
        out[f"Organization/{p.id}".encode()] = f"Organization?identifier={V.ORG_ID_SYSTEM}|payer-{p.key}".encode()
    return out


def to_bundle_style(raw: bytes, cond: dict[bytes, bytes]) -> bytes:
    raw = _LOCAL_REF.sub(b'"reference":"urn:uuid:', raw)
    return _SHARED_REF.sub(lambda m: b'"reference":"' + cond[m.group(1)] + b'"', raw)


def transaction_bundle(entries: Iterable[tuple[str, str, bytes, bytes | None]]) -> bytes:
    """entries: (resourceType, id, resource JSON, ifNoneExist query or None)."""
    parts = []
    for rtype, rid, body, if_none in entries:
        req = b'{"method":"POST","url":"' + rtype.encode() + b'"'
        if if_none is not None:
            req += b',"ifNoneExist":' + orjson.dumps(if_none.decode())
        parts.append(b'{"fullUrl":"urn:uuid:' + rid.encode() + b'","resource":' + body + b',"request":' + req
                     + b"}}")
    return b'{"resourceType":"Bundle","type":"transaction","entry":[' + b",".join(parts) + b"]}"


# --- shared resources ------------------------------------------------------------------------------


def shared_resources(world: World) -> list[tuple[str, str, dict, bytes]]:
    """Organizations, Locations and Practitioners, each with its conditional-create query."""
    out: list[tuple[str, str, dict, bytes]] = []
    sysorg = {"resourceType": "Organization", "id": world.system_org_id, "active": True,
              "identifier": [{"system": V.ORG_ID_SYSTEM, "value": "careloop-health"}],
              "type": [V.concept(V.coding("http://terminology.hl7.org/CodeSystem/organization-type", "prov",
                                          "Healthcare Provider"))],
              "name": "Careloop Health System"}
    out.append(("Organization", world.system_org_id, sysorg, f"identifier={V.ORG_ID_SYSTEM}|careloop-health".encode()))
    for s in world.sites:
        org = {"resourceType": "Organization", "id": s.id, "active": True,
               "identifier": [{"system": V.NPI, "value": s.npi}, {"system": V.ORG_ID_SYSTEM, "value": s.key}],
               "type": [V.concept(V.coding("http://terminology.hl7.org/CodeSystem/organization-type", "prov",
                                           "Healthcare Provider"))],
               "name": s.name, "telecom": [{"system": "phone", "value": f"({s.area_code}) 555-0100"}],
               "address": [{"city": s.city, "state": s.state, "postalCode": s.zips[0], "country": "US"}],
               "partOf": {"reference": f"Organization/{world.system_org_id}"}}
        out.append(("Organization", s.id, org, f"identifier={V.NPI}|{s.npi}".encode()))
    for p in world.payers.values():
        org = {"resourceType": "Organization", "id": p.id, "active": True,
               "identifier": [{"system": V.ORG_ID_SYSTEM, "value": f"payer-{p.key}"}],
               "type": [V.concept(V.coding("http://terminology.hl7.org/CodeSystem/organization-type", "pay",
                                           "Payer"))], "name": p.name}
        out.append(("Organization", p.id, org, f"identifier={V.ORG_ID_SYSTEM}|payer-{p.key}".encode()))
    for s in world.sites:
        for code, name in s.wards:
            wid = s.ward_ids[code]
            loc = {"resourceType": "Location", "id": wid, "status": "active",
                   "identifier": [{"system": V.LOC_ID_SYSTEM, "value": f"{s.key}-{code}"}],
                   "name": f"{s.name} {name}", "mode": "instance",
                   "physicalType": V.concept(V.coding("http://terminology.hl7.org/CodeSystem/location-physical-type",
                                                      "wa", "Ward")),
                   "managingOrganization": {"reference": f"Organization/{s.id}"}}
            out.append(("Location", wid, loc, f"identifier={V.LOC_ID_SYSTEM}|{s.key}-{code}".encode()))
    for docs in world.practitioners.values():
        for d in docs:
            pr = {"resourceType": "Practitioner", "id": d.id, "active": True,
                  "identifier": [{"system": V.NPI, "value": d.npi}],
                  "name": [{"family": d.family, "given": [d.given], "prefix": ["Dr."]}],
                  "qualification": [{"code": {"text": d.specialty}}]}
            out.append(("Practitioner", d.id, pr, f"identifier={V.NPI}|{d.npi}".encode()))
    return out


# --- one shard -----------------------------------------------------------------------------------

_STATE: dict = {}


def _init_worker(cfg: SynthConfig, staging: str) -> None:
    world = build_world(cfg.seed)
    _STATE.update(cfg=cfg, world=world, renderer=Renderer(cfg, world), cond=conditional_refs(world),
                  bundles=Path(staging) / "bundles")


def _micros(ts: int | None) -> int | None:
    return None if ts is None else ts * 1_000_000


def run_shard(index: int) -> ShardResult:
    cfg: SynthConfig = _STATE["cfg"]
    world: World = _STATE["world"]
    renderer: Renderer = _STATE["renderer"]
    cond: dict[bytes, bytes] = _STATE["cond"]
    bundle_dir: Path = _STATE["bundles"]
    lo = index * cfg.shard_size
    hi = min(cfg.patients, lo + cfg.shard_size)
    compressors: dict[str, zlib._Compress] = {}
    chunks: dict[str, list[bytes]] = {}
    packed: dict[str, list[bytes]] = {}
    counts: Counter = Counter()
    stays: list[tuple] = []
    patients: list[tuple] = []
    bundle_bytes = 0
    dumps = orjson.dumps
    gz = cfg.bundle_format == "json.gz"
    for idx in range(lo, hi):
        person = simulate(idx, cfg, world)
        entries = []
        n_cond = 0
        for rtype, rid, res in renderer.render(person):
            raw = dumps(res)
            buf = chunks.get(rtype)
            if buf is None:
                buf = chunks[rtype] = []
                compressors[rtype] = zlib.compressobj(NDJSON_LEVEL, zlib.DEFLATED, 31)
                packed[rtype] = []
            buf.append(raw)
            counts[rtype] += 1
            if rtype == "Condition" and res["category"][0]["coding"][0]["code"] == "problem-list-item":
                n_cond += 1
            if_none = f"identifier={V.MRN_SYSTEM}|{person.mrn}".encode() if rtype == "Patient" else None
            entries.append((rtype, rid, to_bundle_style(raw, cond), if_none))
        # flush the per-type buffers into their compressors every patient (bounded memory)
        for rtype, buf in chunks.items():
            if buf:
                packed[rtype].append(compressors[rtype].compress(b"\n".join(buf) + b"\n"))
                buf.clear()
        bundle = transaction_bundle(entries)
        path = bundle_dir / f"{person.id}.{cfg.bundle_format}"
        data = gzip.compress(bundle, compresslevel=BUNDLE_LEVEL, mtime=0) if gz else bundle
        path.write_bytes(data)
        bundle_bytes += len(data)
        for s in person.stays:
            if not s.finished:
                continue
            stays.append((s.id, person.id, s.site, _micros(s.admit), _micros(s.discharge), s.dx, s.elective,
                          s.disposition, None if s.died else s.true_risk, s.readmitted and not s.died,
                          s.censored, s.died, s.death_risk, None if s.died else s.clinician_risk,
                          bool(s.note_themes)))
        n_true = sum(1 for c in person.chronic if c.recorded)
        patients.append((person.id, person.site, person.frailty, n_true, n_cond, n_cond < n_true,
                         person.case_mix_shifted, _micros(person.death)))
    members = {rtype: b"".join(packed[rtype]) + c.flush() for rtype, c in compressors.items()}
    return ShardResult(index, members, counts, stays, patients, bundle_bytes)


# --- the run ---------------------------------------------------------------------------------------


def generate(cfg: SynthConfig, progress: Callable[[int], None] | None = None) -> SynthResult:
    """Write the hospital described by `cfg` to `cfg.out`; `progress(n)` is told of each n patients done."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    staging = out / ".synth-staging"
    if staging.exists():
        shutil.rmtree(staging)
    (staging / "ndjson").mkdir(parents=True)
    (staging / "bundles").mkdir()
    (staging / "truth").mkdir()
    try:
        result = _generate_into(cfg, staging, progress)
        if cfg.updates:
            result.updates = {day: dict(c) for day, c in write_updates(
                staging / "ndjson", staging / "updates", seed=cfg.seed, after=cfg.end).items()}
        for name in ("ndjson", "bundles", "truth", "updates"):
            target = out / name
            if target.exists():
                shutil.rmtree(target)
            if (staging / name).exists():
                (staging / name).rename(target)
        summary = out / "summary.json"
        summary.write_bytes(orjson.dumps(result.to_json() | {"out": None}, option=orjson.OPT_INDENT_2
                                         | orjson.OPT_SORT_KEYS))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    result.out = out
    return result


def _generate_into(cfg: SynthConfig, staging: Path, progress: Callable[[int], None] | None) -> SynthResult:
    world = build_world(cfg.seed)
    counts: Counter = Counter()
    nd = staging / "ndjson"
    cond = conditional_refs(world)
    shared = shared_resources(world)
    files: dict[str, object] = {}

    def sink(rtype: str):
        f = files.get(rtype)
        if f is None:
            f = files[rtype] = open(nd / f"{rtype}.ndjson.gz", "wb")  # noqa: SIM115 - closed below
        return f

    bytes_written = 0
    for rtype in ("Organization", "Location", "Practitioner"):
        lines = [orjson.dumps(r) for t, _, r, _ in shared if t == rtype]
        member = gzip.compress(b"\n".join(lines) + b"\n", compresslevel=NDJSON_LEVEL, mtime=0)
        sink(rtype).write(member)
        counts[rtype] += len(lines)
    info = {"hospitalInformation": ("Organization", "Location"), "practitionerInformation": ("Practitioner",)}
    for name, types in info.items():
        entries = [(t, rid, to_bundle_style(orjson.dumps(r), cond), q) for t, rid, r, q in shared if t in types]
        data = transaction_bundle(entries)
        if cfg.bundle_format == "json.gz":
            data = gzip.compress(data, compresslevel=BUNDLE_LEVEL, mtime=0)
        (staging / "bundles" / f"{name}.{cfg.bundle_format}").write_bytes(data)
        bytes_written += len(data)

    n_shards = -(-cfg.patients // cfg.shard_size)
    stays_w = pq.ParquetWriter(staging / "truth" / "stays.parquet", STAY_SCHEMA, compression="zstd")
    pats_w = pq.ParquetWriter(staging / "truth" / "patients.parquet", PATIENT_SCHEMA, compression="zstd")
    stay_rows = readmits = eligible = deaths = 0
    by_site: dict[str, Counter] = {s.key: Counter() for s in world.sites}
    try:
        for res in _shards(cfg, staging, n_shards):
            for rtype in RESOURCE_ORDER:
                member = res.members.get(rtype)
                if member:
                    sink(rtype).write(member)
            counts.update(res.counts)
            bytes_written += res.bundle_bytes
            if res.stays:
                cols = list(zip(*res.stays, strict=True))
                stays_w.write_table(pa.Table.from_arrays([pa.array(c, type=f.type) for c, f in
                                                          zip(cols, STAY_SCHEMA, strict=True)], schema=STAY_SCHEMA))
            cols = list(zip(*res.patients, strict=True))
            pats_w.write_table(pa.Table.from_arrays([pa.array(c, type=f.type) for c, f in
                                                     zip(cols, PATIENT_SCHEMA, strict=True)], schema=PATIENT_SCHEMA))
            for row in res.stays:
                stay_rows += 1
                site = by_site[row[2]]
                site["stays"] += 1
                deaths += row[11]
                site["deaths"] += row[11]
                if not row[11] and not row[10]:
                    eligible += 1
                    readmits += row[9]
                    site["eligible"] += 1
                    site["readmits"] += row[9]
            if progress:
                progress(len(res.patients))
    finally:
        stays_w.close()
        pats_w.close()
        for f in files.values():
            f.close()
    manifest = {
        "transactionTime": dt.datetime.fromtimestamp(_ts(cfg.end), dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "request": "[base]/$export?_outputFormat=application/fhir%2Bndjson",
        "requiresAccessToken": False,
        "output": [{"type": t, "url": f"{t}.ndjson.gz", "count": counts[t]} for t in RESOURCE_ORDER if counts[t]],
        "error": [],
        "extension": {"generator": f"careloop synth {__version__}", "seed": cfg.seed, "patients": cfg.patients,
                      "scenarios": list(cfg.scenarios), "urlsRelativeTo": "this manifest"},
    }
    (nd / "manifest.json").write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
    describe = mechanism.describe()
    describe["sites"] = [{"key": s.key, "name": s.name, "readmit_offset": s.readmit_offset, "lab_units": s.lab_units,
                          "vital_units": s.vital_units, "local_time": s.local_time,
                          "records_housing": s.records_housing} for s in world.sites]
    describe["scenarios"] = {
        "drift": {"on": cfg.drift, "date": str(cfg.effective_drift_date) if cfg.drift else None},
        "bias": {"on": cfg.bias, "group": cfg.bias_group if cfg.bias else None, "rate": cfg.bias_rate},
    }
    (staging / "truth" / "mechanism.json").write_bytes(orjson.dumps(describe, option=orjson.OPT_INDENT_2))
    for p in sorted(nd.iterdir()):
        bytes_written += p.stat().st_size
    for p in (staging / "truth").iterdir():
        bytes_written += p.stat().st_size
    sites = {k: {"stays": c["stays"], "readmission_rate_30d": round(c["readmits"] / max(c["eligible"], 1), 4),
                 "inhospital_mortality": round(c["deaths"] / max(c["stays"], 1), 4)} for k, c in by_site.items()}
    return SynthResult(
        out=staging, patients=cfg.patients, counts={t: counts[t] for t in RESOURCE_ORDER if counts[t]},
        bytes_written=bytes_written, stays=stay_rows,
        readmission_rate=round(readmits / max(eligible, 1), 4),
        inhospital_mortality=round(deaths / max(stay_rows, 1), 4), by_site=sites,
    )


def _shards(cfg: SynthConfig, staging: Path, n_shards: int) -> Iterable[ShardResult]:
    if cfg.workers == 1 or n_shards == 1:
        _init_worker(cfg, str(staging))
        for i in range(n_shards):
            yield run_shard(i)
        return
    ctx = mp.get_context("fork" if os.name == "posix" else "spawn")
    with ctx.Pool(cfg.workers, initializer=_init_worker, initargs=(cfg, str(staging))) as pool:
        yield from pool.imap(run_shard, range(n_shards), chunksize=1)
