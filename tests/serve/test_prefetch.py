"""The prefetch read in one pass (each value decoded straight into the ingest's typed resources) gives exactly what
reading it resource by resource gives: the same resources used, rows mapped, digest, and features. A value the
one-pass decoder cannot take (a resource type careloop skips, a field of the wrong type, a malformed entry) is read
resource by resource, so each problem is named and the rest of the data is still used."""

from __future__ import annotations

import copy

import msgspec
import orjson
import pytest

from careloop.features.spec import load_feature_set
from careloop.serve import features as F
from careloop.serve.app import HookRequest
from careloop.serve.features import bedside_features, collect

from .harness import hook_request, patient_resources, prefetch_of

FS = load_feature_set("readmission")


def as_received(patient: str, encounter: str, prefetch: dict) -> dict[str, msgspec.Raw]:
    """The prefetch as the service holds it: the request's bytes, each value left undecoded."""
    body = orjson.dumps(hook_request(patient, encounter, prefetch))
    return HookRequest.decode(body).prefetch


def summary(pre) -> dict:
    return {"used": sorted((ident, msgspec.msgpack.encode(r)) for ident, r in pre.used),
            "ev": sorted(pre.batch.ev, key=repr),
            "enc": pre.batch.enc, "pat": pre.batch.pat, "dir": pre.batch.dir, "missing": pre.missing,
            "outcomes": pre.outcomes, "malformed": pre.malformed, "foreign": pre.foreign,
            "rejected": sorted(pre.rejected),
            "deferred": len(pre.deferred), "digest": pre.digest()}


def some_records(hospital, n: int) -> dict[str, dict[str, list[dict]]]:
    """The resources of the first `n` patients of the synthetic hospital, by prefetch key."""
    import gzip

    with gzip.open(hospital / "ndjson" / "Patient.ndjson.gz") as fh:
        ids = [orjson.loads(line)["id"] for _, line in zip(range(n), fh, strict=False)]
    res = patient_resources(hospital / "ndjson", set(ids))
    return {pid: res[pid] for pid in ids}


@pytest.fixture(scope="module")
def a_record(hospital) -> tuple[str, dict]:
    """One patient with at least two conditions and two encounters, and their resources by prefetch key (read
    once: reading the hospital's files takes seconds)."""
    return next((p, g) for p, g in some_records(hospital, 40).items()
                if len(g.get("conditions", [])) >= 2 and len(g.get("encounters", [])) >= 2)


def test_one_pass_equals_resource_by_resource(hospital_store, hospital, monkeypatch):
    import pyarrow.compute as pc

    from careloop.engines import DuckDBEngine
    from careloop.tasks.cohort import build_cohort
    from careloop.tasks.spec import load_task

    cohort = build_cohort(load_task("readmission-30d"), DuckDBEngine(hospital_store[0])).table
    cohort = cohort.filter(pc.equal(cohort.column("split"), "test")).slice(0, 120).to_pylist()
    res = patient_resources(hospital / "ndjson", {r["patient_id"] for r in cohort})
    one_by_one = []
    real = F._decode_one
    monkeypatch.setattr(F, "_decode_one", lambda raw: one_by_one.append(raw) or real(raw))
    scored = 0
    for row in cohort:
        pid, enc = row["patient_id"], row["encounter_id"]
        pf = prefetch_of(res[pid])
        fast = collect(as_received(pid, enc, pf), pid)
        assert not one_by_one  # a clean prefetch is read in one pass
        slow = collect(pf, pid)
        assert one_by_one
        one_by_one.clear()
        assert summary(fast) == summary(slow), pid
        a = bedside_features(FS, fast, pid, enc)
        b = bedside_features(FS, slow, pid, enc)
        assert a.row == b.row and a.reason == b.reason and fast.unread == slow.unread, enc
        scored += a.row is not None
    assert scored >= 100


def test_a_value_the_fast_decoder_refuses_is_read_resource_by_resource(hospital):
    res = None
    for pid, groups in some_records(hospital, 40).items():
        if len(groups.get("conditions", [])) >= 3 and groups.get("encounters"):
            res = (pid, groups)
            break
    assert res is not None
    pid, groups = res
    pf = prefetch_of(groups)
    enc = groups["encounters"][-1]["id"]
    messy = copy.deepcopy(pf)
    bad = dict(messy["conditions"]["entry"][0]["resource"], code="not a CodeableConcept")
    messy["conditions"]["entry"][0] = {"resource": bad}
    messy["conditions"]["entry"] += [
        {"resource": {"resourceType": "Provenance", "id": "p1"}},  # a type careloop skips
        {"resource": {"resourceType": "OperationOutcome", "issue": []}},  # a search warning
        {"fullUrl": "urn:uuid:no-resource"},  # an entry without a resource
    ]
    fast, slow = collect(as_received(pid, enc, messy), pid), collect(messy, pid)
    assert summary(fast) == summary(slow)
    assert fast.rejected == ["Condition: invalid value"]
    clean = collect(as_received(pid, enc, pf), pid)
    # every other condition is still used: one fewer than the clean prefetch
    assert sum(t == "Condition" for (t, _), _ in fast.used) == len(groups["conditions"]) - 1
    assert sum(t == "Condition" for (t, _), _ in clean.used) == len(groups["conditions"])


@pytest.mark.parametrize("value, what", [
    (None, "missing"),
    ({"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "processing"}]}, "outcomes"),
])
def test_null_and_operation_outcome_values(a_record, value, what):
    pid, groups = a_record
    pf = prefetch_of(groups)
    pf["procedures"] = value
    fast, slow = collect(as_received(pid, "e", pf), pid), collect(pf, pid)
    assert summary(fast) == summary(slow)
    assert getattr(fast, what) == ["procedures"]


def test_digest_is_of_the_prefetch_as_received(hospital):
    """The EHR can compute it from what it sent: each key asked for, in template order, with its JSON bytes."""
    import hashlib

    from careloop.serve.features import PREFETCH

    (pid, groups), (_, other) = list(some_records(hospital, 2).items())
    pf = prefetch_of(groups)
    pf["procedures"] = None
    body = orjson.dumps(hook_request(pid, "e", pf))
    sent = orjson.loads(body)["prefetch"]
    expected = hashlib.sha256(b"".join(k.encode() + b"\0" + orjson.dumps(sent[k]) + b"\0"
                                       for k in PREFETCH if k in sent)).hexdigest()
    assert collect(HookRequest.decode(body).prefetch, pid).digest() == expected
    assert collect(pf, pid).digest() == expected  # the same data held as parsed JSON (read from a FHIR server)
    changed = copy.deepcopy(pf)
    changed["patient"]["birthDate"] = "1901-01-01"
    mixed = copy.deepcopy(pf)
    mixed["encounters"]["entry"] += [{"resource": r} for r in other["encounters"]]
    assert len({collect(as_received(pid, "e", x), pid).digest() for x in (pf, changed, mixed)}) == 3


@pytest.mark.scale  # a cohort and its features over the hospital (about 12 s): with the slow runs, run by CI
def test_a_withdrawn_result_never_reaches_the_bedside_features(hospital_store, hospital):
    """Stays whose record holds results withdrawn as entered-in-error (a tenfold slip, sent beside the right
    result): their features are the same as with those results absent, and would not be if the results counted."""
    import pyarrow.compute as pc

    from careloop.engines import DuckDBEngine
    from careloop.tasks.cohort import build_cohort
    from careloop.tasks.spec import load_task

    cohort = build_cohort(load_task("readmission-30d"), DuckDBEngine(hospital_store[0])).table
    stays = {r["encounter_id"]: r["patient_id"] for r in cohort.filter(pc.is_valid(cohort.column("label"))
                                                                        ).to_pylist()}
    res = patient_resources(hospital / "ndjson", set(stays.values()))
    withdrawn_in = {}
    for enc, pid in stays.items():
        bad = [o for o in res[pid]["observations"] if o["status"] == "entered-in-error"
               and o["encounter"]["reference"] == f"Encounter/{enc}"]
        if bad:
            withdrawn_in[enc] = bad
    assert len(withdrawn_in) >= 20
    changed = 0
    for enc, bad in list(withdrawn_in.items())[:40]:
        pid = stays[enc]
        kept = prefetch_of(res[pid])
        without = prefetch_of({**res[pid], "observations": [o for o in res[pid]["observations"] if o not in bad]})
        counted = prefetch_of({**res[pid], "observations": [o | {"status": "final"} if o in bad else o
                                                            for o in res[pid]["observations"]]})
        a, b, c = (bedside_features(FS, collect(as_received(pid, enc, pf), pid), pid, enc)
                   for pf in (kept, without, counted))
        assert a.row is not None and a.row == b.row, enc
        changed += c.row != a.row
    assert changed >= 10  # the withdrawn values would have moved the features


def _rewrite_patient_refs(pf: dict, pid: str, to: str) -> dict:
    """The prefetch with every reference to the patient written as `to` ("{}" stands for the id)."""
    out = copy.deepcopy(pf)
    for value in out.values():
        for e in (value or {}).get("entry", []) if isinstance(value, dict) else []:
            for key in F._PATIENT_REFS:
                ref = e["resource"].get(key)
                if isinstance(ref, dict) and ref.get("reference") == f"Patient/{pid}":
                    ref["reference"] = to.format(pid)
    return out


@pytest.mark.parametrize("form", ["Patient/{}/_history/4", "https://ehr.example.org/fhir/Patient/{}"])
def test_a_reference_to_the_patient_in_any_form_ingest_reads_is_the_patients(a_record, form):
    """A versioned or absolute reference names the patient at the bedside as it does at ingest (`resolve`): the
    same resources are used and the features are the same."""
    pid, groups = a_record
    pf = prefetch_of(groups)
    enc = groups["encounters"][-1]["id"]
    written = _rewrite_patient_refs(pf, pid, form)
    assert written != pf
    plain = collect(as_received(pid, enc, pf), pid)
    other = collect(as_received(pid, enc, written), pid)
    assert other.foreign == plain.foreign == 0
    assert sorted(i for i, _ in other.used) == sorted(i for i, _ in plain.used)
    assert bedside_features(FS, other, pid, enc).row == bedside_features(FS, plain, pid, enc).row


@pytest.mark.parametrize("form", ["Group/{}", "Patient/", "Patient/{}-other"])
def test_a_reference_that_does_not_name_the_patient_is_not_used(a_record, form):
    pid, groups = a_record
    written = _rewrite_patient_refs(prefetch_of(groups), pid, form)
    got = collect(as_received(pid, groups["encounters"][-1]["id"], written), pid)
    assert [t for (t, _), _ in got.used] == ["Patient"]
    assert got.foreign == sum(len(v) for k, v in groups.items() if k != "patient")


@pytest.mark.parametrize("value", ["garbage", 42, [], {}, {"foo": "bar"}, {"resourceType": 7},
                                   {"resourceType": "Bundle", "entry": "x"}])
def test_a_value_that_is_no_resource_or_bundle_is_malformed_not_empty(a_record, value):
    """Read as "nothing", it would lower the risk of a patient whose record says otherwise: it is set apart."""
    pid, groups = a_record
    pf = prefetch_of(groups)
    pf["conditions"] = value
    fast, slow = collect(as_received(pid, "e", pf), pid), collect(pf, pid)
    assert summary(fast) == summary(slow)
    assert fast.malformed == ["conditions"] and not fast.outcomes and not fast.missing
    assert not any(t == "Condition" for (t, _), _ in fast.used)


@pytest.mark.parametrize("severity, failed", [("fatal", True), ("error", True), ("warning", False),
                                              ("information", False)])
def test_an_operation_outcome_inside_a_bundle_fails_the_search_only_when_it_says_so(a_record, severity, failed):
    """CDS Hooks: the client SHOULD report prefetch errors with OperationOutcomes, and the service check for them. An
    error or fatal issue means the search failed (its entries may be partial); a warning is only a warning."""
    pid, groups = a_record
    pf = prefetch_of(groups)
    pf["conditions"]["entry"].append({"resource": {"resourceType": "OperationOutcome",
                                                   "issue": [{"severity": severity, "code": "processing"}]},
                                      "search": {"mode": "outcome"}})
    fast, slow = collect(as_received(pid, "e", pf), pid), collect(pf, pid)
    assert summary(fast) == summary(slow)
    assert fast.outcomes == (["conditions"] if failed else [])
    used = sum(t == "Condition" for (t, _), _ in fast.used)
    assert used == (0 if failed else len(groups["conditions"]))
