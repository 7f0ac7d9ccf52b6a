"""A resource sent more than once is read in its newest version, by its own meta.lastUpdated, else a numeric
meta.versionId, else arrival order: inside one unit of input, across units and runs, and at the bedside alike."""

from __future__ import annotations

import itertools

import orjson
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from careloop import contracts as C
from careloop.ingest.runner import ingest
from careloop.ingest.versions import Version, newest, supersedes, version_of
from careloop.serve.features import collect
from careloop.store import FORMAT, EventStore

PAT = {"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1950-02-03"}
CREAT = {"resourceType": "Observation", "id": "cr1", "status": "final", "subject": {"reference": "Patient/p1"},
         "code": {"coding": [{"system": "http://loinc.org", "code": "2160-0"}]},
         "effectiveDateTime": "2024-03-04T05:06:07Z", "valueQuantity": {"value": 1.1, "code": "mg/dL"}}
T1, T2, T3 = "2024-03-04T06:00:00Z", "2024-03-04T07:00:00+00:00", "2024-03-05T01:00:00.123+02:00"


def _meta(res: dict, updated: str | None = None, version: str | None = None) -> dict:
    meta = {"profile": ["http://example.org/p"]}
    if updated:
        meta["lastUpdated"] = updated
    if version:
        meta["versionId"] = version
    return res | {"meta": meta}


def _value(v: float, **kw) -> dict:
    return _meta(CREAT | {"valueQuantity": {"value": v, "code": "mg/dL"}}, **kw)


WITHDRAWN = _meta(CREAT | {"status": "entered-in-error", "valueQuantity": {"value": 11.0, "code": "mg/dL"}},
                  updated=T2)


def _ingest(tmp_path, *files: list[dict], name: str = "export", store=None) -> tuple[dict, object]:
    folder = tmp_path / name
    folder.mkdir()
    for i, resources in enumerate(files):
        (folder / f"{i:02d}.ndjson").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in resources))
    store = store or tmp_path / "store"
    report = ingest([folder], store, workers=1).to_json()
    assert report["reconciled"], report
    return report, EventStore.open(store).connect()


def _creatinine(con) -> list:
    return con.execute("SELECT numeric_value FROM events WHERE source_id = 'cr1' ORDER BY 1").fetchall()


# --- the rule ----------------------------------------------------------------------------------------


def test_version_of_reads_instants_and_whole_numbers_and_ignores_the_rest():
    assert version_of(T1, "3") == Version(1709532000000000, 3)
    assert version_of(T3, None).updated == version_of("2024-03-04T23:00:00.123Z", None).updated  # offsets honoured
    for bad in ("2024-03-04", "yesterday", "2024-13-45T00:00:00Z", 20240304, None):
        assert version_of(bad, None).updated is None, bad
    for bad in ("v2", "-1", "1.5", "", "٣", 3, "9" * 19):
        assert version_of(None, bad).number is None, bad


def test_supersedes_by_last_updated_then_version_then_arrival():
    old, new = version_of(T1, "9"), version_of(T2, "2")
    assert supersedes(new, old) and not supersedes(old, new)  # lastUpdated decides over versionId
    assert not supersedes(version_of(None, "2"), version_of(None, "10"))  # numerically, not as text
    assert supersedes(version_of(T1, "3"), version_of(T1, "2"))  # same instant: the version number
    assert not supersedes(version_of(None, "1"), version_of(T2, None))  # a stated lastUpdated ranks higher
    assert not supersedes(Version(None, None), version_of(None, "1"))  # ... and a stated versionId
    assert supersedes(Version(None, None), Version(None, None))  # nothing to tell them apart: the later arrival


versions = st.builds(Version, st.none() | st.integers(0, 5), st.none() | st.integers(0, 5))


@given(st.lists(versions, min_size=1, max_size=8), st.data())
def test_the_copy_kept_does_not_depend_on_how_the_input_is_cut(copies, data):
    """The winner of each piece, then of the pieces' winners (in order), is the winner of the whole: what a
    unit boundary, or a second run, must not change."""
    cut = data.draw(st.integers(0, len(copies)))
    pieces = [list(range(cut)), list(range(cut, len(copies)))]
    winners = [p[newest([copies[i] for i in p])] for p in pieces if p]
    assert winners[newest([copies[i] for i in winners])] == newest(copies)


@given(st.lists(st.integers(0, 10**6), min_size=1, max_size=8, unique=True), st.randoms())
def test_the_newest_by_last_updated_wins_whatever_the_arrival_order(stamps, rnd):
    copies = [Version(t, None) for t in stamps]
    rnd.shuffle(copies)
    assert copies[newest(copies)].updated == max(stamps)


# --- inside one unit -----------------------------------------------------------------------------------


def test_a_result_withdrawn_later_in_the_same_file_gives_no_event(tmp_path):
    report, con = _ingest(tmp_path, [PAT, _meta(CREAT, updated=T1), WITHDRAWN])
    assert _creatinine(con) == []
    assert report["reasons"]["skipped: superseded by a newer version in the same batch of input"] == 1
    assert report["reasons"]["loaded without events: Observation entered-in-error"] >= 1
    assert con.execute("SELECT last_updated FROM resources WHERE resource_key = 'Observation/cr1'").fetchall() \
        == [(T2,)]


def test_an_older_copy_after_the_newer_one_is_skipped(tmp_path):
    report, con = _ingest(tmp_path, [PAT, WITHDRAWN, _meta(CREAT, updated=T1)])
    assert _creatinine(con) == []
    assert report["reasons"]["skipped: an older version of a resource already in the same batch of input (by meta)"] \
        == 1


def test_without_meta_the_later_copy_wins_and_a_repeat_is_skipped(tmp_path):
    report, con = _ingest(tmp_path, [PAT, _value(1.1), _value(2.2), _value(2.2)])
    assert _creatinine(con) == [(2.2,)]
    assert report["reasons"]["skipped: superseded by a newer version in the same batch of input"] == 1
    assert report["reasons"]["skipped: same Type/id again in the same batch of input, same content"] == 1
    assert report["input"] == 4 and report["loaded"] == 2 and report["skipped"] == 2


def test_versions_out_of_order_keep_the_highest_version_id(tmp_path):
    copies = [_value(2.0, version="2"), _value(3.0, version="10"), _value(1.0, version="1")]
    for n, order in enumerate(itertools.permutations(copies)):
        base = tmp_path / f"o{n}"
        base.mkdir()
        report, con = _ingest(base, [PAT, *order])
        assert _creatinine(con) == [(3.0,)], order
        assert report["loaded"] == 2 and report["skipped"] == 2, order


def test_every_table_keeps_only_the_newest_copy(tmp_path):
    """An encounter updated in-progress -> finished, a patient's address moved, a location renamed (two
    identifiers, so two directory rows per copy): each table holds the newest copy's rows only, as if it alone
    had been sent."""
    enc = {"resourceType": "Encounter", "id": "e1", "status": "in-progress", "class": {"code": "IMP"},
           "subject": {"reference": "Patient/p1"}, "period": {"start": "2024-01-01T10:00:00Z"}}
    done = enc | {"status": "finished", "period": {"start": "2024-01-01T10:00:00Z", "end": "2024-01-04T12:00:00Z"},
                  "hospitalization": {"dischargeDisposition": {"coding": [{"code": "home"}]}}}
    loc = {"resourceType": "Location", "id": "w1", "name": "Ward 1",
           "identifier": [{"system": "urn:a", "value": "1"}, {"system": "urn:b", "value": "W1"}]}
    moved = PAT | {"address": [{"postalCode": "02139"}]}
    old = [_meta(enc, version="1"), _meta(PAT, version="1"), _meta(loc, version="1")]
    new = [_meta(done, version="2"), _meta(moved, version="2"), _meta(loc | {"name": "Ward 1 East"}, version="2")]
    newer_first = tmp_path / "a"
    newer_first.mkdir()
    _, con = _ingest(newer_first, [new[0], old[1], old[0], new[1], old[2], new[2], _meta(CREAT, version="1")])
    alone = tmp_path / "b"
    alone.mkdir()
    _, ref = _ingest(alone, [*new, _meta(CREAT, version="1")])
    for table in ("events", "encounters", "patients", "directory"):
        got = sorted(con.execute(f"SELECT * FROM {table}").fetchall(), key=repr)
        assert got == sorted(ref.execute(f"SELECT * FROM {table}").fetchall(), key=repr), table
    assert con.execute("SELECT status FROM encounters_raw").fetchall() == [("finished",)]
    assert sorted(con.execute("SELECT name FROM directory").fetchall()) == [("Ward 1 East",)] * 2


def test_a_history_bundle_lists_the_newest_first(tmp_path):
    folder = tmp_path / "bundles"
    folder.mkdir()
    history = [_value(3.0, version="3", updated=T3), _value(2.0, version="2", updated=T2),
               _value(1.0, version="1", updated=T1)]
    bundle = {"resourceType": "Bundle", "type": "history",
              "entry": [{"fullUrl": "urn:uuid:0d1f5c9e-0000-4000-8000-000000000001", "resource": PAT}]
              + [{"resource": r} for r in history]}
    (folder / "h.json").write_bytes(orjson.dumps(bundle))
    report = ingest([folder], tmp_path / "store", workers=1).to_json()
    assert report["reconciled"]
    assert _creatinine(EventStore.open(tmp_path / "store").connect()) == [(3.0,)]


# --- across units and runs -----------------------------------------------------------------------------


def test_a_stale_copy_loaded_later_does_not_replace_the_newer_one(tmp_path):
    """Run 1 loads the withdrawn result (the newest); run 2 receives an old export with the original: the
    withdrawal stands, and the report says why the copy was not kept."""
    _, con = _ingest(tmp_path, [PAT, WITHDRAWN], name="run1")
    con.close()
    report, con = _ingest(tmp_path, [_meta(CREAT, updated=T1)], name="run2")
    assert _creatinine(con) == []
    assert report["loaded"] == 0 and report["skipped"] == 1
    assert report["reasons"]["skipped: older than the version already loaded (by meta)"] == 1
    assert con.execute("SELECT count(*) FROM resources WHERE resource_key = 'Observation/cr1'").fetchone() == (1,)


def test_one_file_or_two_keep_the_same_copy(tmp_path):
    """Copies with lastUpdated T2, none, T1: the same copy stands whether they come in one unit or two."""
    copies = [_value(2.0, updated=T2), _value(9.0), _value(1.0, updated=T1)]
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    _, one = _ingest(tmp_path / "one", [PAT, *copies])
    _, two = _ingest(tmp_path / "two", [PAT, *copies[:2]], copies[2:])
    assert _creatinine(one) == _creatinine(two) == [(2.0,)]


def test_units_of_one_run_settle_by_version_not_by_commit_order(tmp_path):
    """Two files of one run (two units, committed in order): the newer version is in the first."""
    report, con = _ingest(tmp_path, [PAT, _value(2.0, updated=T2)], [_value(1.0, updated=T1)])
    assert _creatinine(con) == [(2.0,)]
    assert report["reasons"]["skipped: older than the version already loaded (by meta)"] == 1
    assert report["loaded"] == 2


@pytest.mark.parametrize("second_run", ["an update", "no resource at all"])
def test_a_store_from_before_the_meta_columns_is_upgraded_by_its_next_ingest(tmp_path, second_run):
    """A store written by an earlier careloop has no last_updated/version_id columns (and no _format): the next
    ingest adds them, null, to every part, so the resource index reads alike and settles; its copies count as
    unversioned, so a later copy with a version replaces them."""
    _ingest(tmp_path, [PAT, _value(1.0)], name="run1")
    store = tmp_path / "store"
    for part in (store / "resources").glob("part-*.parquet"):
        pq.write_table(pq.read_table(part).drop(["last_updated", "version_id"]), part)
    (store / "_format").unlink()
    sent = [_value(2.0, updated=T1)] if second_run == "an update" else [{"resourceType": "Claim", "id": "c1"}]
    report, con = _ingest(tmp_path, sent, name="run2")
    assert _creatinine(con) == ([(2.0,)] if second_run == "an update" else [(1.0,)])
    for part in (store / "resources").glob("part-*.parquet"):
        assert pq.read_schema(part).names == C.RESOURCES.names
    assert con.execute("SELECT count(*) FROM resources WHERE last_updated IS NULL").fetchone()[0] >= 1
    assert (store / "_format").read_text().strip() == str(FORMAT)
    if second_run == "an update":
        assert report["reasons"]["loaded: update replacing an earlier version (same Type/id, new content)"] == 1


# --- the bedside reads the same version ---------------------------------------------------------------


@pytest.mark.parametrize("order", [0, 1])
@pytest.mark.parametrize("keys", ["one key", "two keys"])
def test_the_bedside_reads_the_version_ingest_keeps(tmp_path, order, keys):
    copies = [_meta(CREAT, updated=T1), WITHDRAWN]
    if order:
        copies.reverse()
    bundle = lambda rs: {"resourceType": "Bundle", "type": "searchset",  # noqa: E731
                         "entry": [{"resource": r} for r in rs]}
    if keys == "one key":
        prefetch = {"patient": PAT, "observations": bundle(copies)}
    else:  # the same result returned by two searches
        prefetch = {"patient": PAT, "observations": bundle(copies[:1]), "conditions": bundle(copies[1:])}
    pre = collect(prefetch, "p1")
    used = [r for (t, _), r in pre.used if t == "Observation"]
    assert [r.status for r in used] == ["entered-in-error"]
    _, con = _ingest(tmp_path, [PAT, *copies])
    assert _creatinine(con) == []


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(["cr1", "cr2", "e1"]), st.integers(0, 3), st.integers(1, 4),
                          st.booleans()), min_size=1, max_size=9))
def test_a_unit_holds_exactly_the_winners_of_its_copies(tmp_path_factory, sends):
    """Any sequence of copies of a few resources (versions by lastUpdated or versionId, some the same content
    twice) in one file loads exactly what sending only each resource's newest copy loads, row for row."""
    def copy(rid: str, stamp: int, value: int, by_time: bool) -> dict:
        meta = {"updated": f"2024-03-0{stamp + 1}T00:00:00Z"} if by_time else {"version": str(stamp)}
        if rid == "e1":
            return _meta({"resourceType": "Encounter", "id": "e1", "status": "finished", "class": {"code": "IMP"},
                          "subject": {"reference": "Patient/p1"},
                          "period": {"start": "2024-01-01T10:00:00Z", "end": f"2024-01-0{value + 1}T10:00:00Z"}},
                         **meta)
        return _value(float(value), **meta) | {"id": rid}

    copies = [copy(*s) for s in sends]
    winners = {}
    for rid in dict.fromkeys(s[0] for s in sends):
        mine = [c for c in copies if c["id"] == rid]
        winners[rid] = mine[newest([version_of(c["meta"].get("lastUpdated"), c["meta"].get("versionId"))
                                    for c in mine])]
    base = tmp_path_factory.mktemp("unit")
    _, con = _ingest(base, [PAT, *copies], name="all")
    _, ref = _ingest(base, [PAT, *winners.values()], name="winners", store=base / "ref")
    for table in ("events", "encounters"):
        got = sorted(con.execute(f"SELECT * FROM {table}").fetchall(), key=repr)
        assert got == sorted(ref.execute(f"SELECT * FROM {table}").fetchall(), key=repr), table
    assert con.execute("SELECT count(*) FROM resources").fetchone()[0] == 1 + len(winners)


def test_the_report_gives_no_reason_for_a_copy_that_was_replaced(tmp_path):
    """A result first sent withdrawn, or in a unit careloop cannot convert, then corrected: the report counts
    only what stayed loaded (the corrected result), not why the replaced copies would have given no value."""
    odd_unit = _meta(CREAT | {"valueQuantity": {"value": 97.0, "code": "mmol/mol"}}, updated=T1)
    withdrawn_first = _meta(WITHDRAWN, updated=T1)
    report, con = _ingest(tmp_path, [PAT, withdrawn_first, odd_unit | {"id": "cr2"}, _value(1.3, updated=T2),
                                     _value(1.4, updated=T2) | {"id": "cr2"}])
    assert sorted(con.execute("SELECT source_id, numeric_value FROM events WHERE code = 'LOINC/2160-0'")
                  .fetchall()) == [("cr1", 1.3), ("cr2", 1.4)]
    assert not [r for r in report["reasons"] if r.startswith(("loaded without events", "loaded, value not read"))]
    assert report["reasons"]["skipped: superseded by a newer version in the same batch of input"] == 2
    # the same copies, the replacing ones older: the withdrawal and the unread value stand, and are reported
    (tmp_path / "x").mkdir()
    report, _ = _ingest(tmp_path / "x", [PAT, _meta(WITHDRAWN, updated=T2), odd_unit | {"id": "cr2"},
                                         _value(1.3, updated=T1),
                                         _value(1.4, updated="2024-03-04T05:00:00Z") | {"id": "cr2"}])
    assert report["reasons"]["loaded without events: Observation entered-in-error"] == 1
    assert any(r.startswith("loaded, value not read: LOINC/2160-0") for r in report["reasons"])


def test_a_replacing_copy_that_is_quarantined_leaves_the_withdrawal_in_place(tmp_path):
    bad = _value(1.3, updated=T2) | {"effectiveDateTime": "2024-02-30T00:00:00Z"}
    report, con = _ingest(tmp_path, [PAT, _meta(WITHDRAWN, updated=T1), bad])
    assert _creatinine(con) == [] and report["quarantined"] == 1
    assert report["reasons"]["loaded without events: Observation entered-in-error"] == 1


@pytest.mark.parametrize("rtype", ["Condition", "Observation"])
def test_when_the_newest_copy_cannot_be_mapped_both_keep_the_one_before(tmp_path, rtype):
    """Ingest quarantines a newer copy the mapping refuses and keeps the older; the bedside does the same (for an
    Observation too, whose mapping it otherwise defers), and lists why the newer one was not used."""
    if rtype == "Condition":
        good = {"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/p1"},
                "code": {"coding": [{"system": "http://snomed.info/sct", "code": "44054006"}]},
                "recordedDate": "2024-01-01T00:00:00Z"}
        bad = {k: v for k, v in good.items() if k != "recordedDate"}  # no time: 'missing time'
    else:
        good, bad = CREAT, CREAT | {"effectiveDateTime": "2024-02-30T00:00:00Z"}  # 'impossible date'
    copies = [_meta(good, version="1"), _meta(bad, version="2")]
    report, con = _ingest(tmp_path, [PAT, *copies])
    assert report["quarantined"] == 1
    stored = con.execute(f"SELECT count(*) FROM events WHERE source_resource = '{rtype}'").fetchone()[0]
    assert stored >= 1
    key = "conditions" if rtype == "Condition" else "observations"
    pre = collect({"patient": PAT, key: {"resourceType": "Bundle", "entry": [{"resource": r} for r in copies]}},
                  "p1")
    used = [r for (t, _), r in pre.used if t == rtype]
    assert len(used) == 1 and used[0].meta.versionId == "1"
    assert len(pre.rejected) == 1 and pre.rejected[0].startswith(f"{rtype}: ")


@pytest.mark.parametrize("meta", [[], "1", 3, True, {"versionId": 3, "lastUpdated": ["x"]}])
def test_a_meta_careloop_cannot_read_is_no_reason_to_quarantine(tmp_path, meta):
    report, con = _ingest(tmp_path, [PAT, CREAT | {"meta": meta}])
    assert report["quarantined"] == 0 and _creatinine(con) == [(1.1,)]
    pre = collect({"patient": PAT, "observations": {"resourceType": "Bundle", "entry": [
        {"resource": CREAT | {"meta": meta}}, {"resource": _value(2.0, updated=T1)}]}}, "p1")
    assert [r.valueQuantity.value for (t, _), r in pre.used if t == "Observation"] == [2.0] and not pre.rejected


def test_a_copy_settled_away_takes_its_reasons_out_of_the_report(tmp_path):
    """The same as inside a unit, across the units of one run: a withdrawn result and a value in an unknown unit,
    each replaced by a corrected copy in a later file, leave no reason behind; the counts still reconcile."""
    odd_unit = _meta(CREAT | {"id": "cr2", "valueQuantity": {"value": 97.0, "code": "mmol/mol"}}, updated=T1)
    report, con = _ingest(tmp_path, [PAT, _meta(WITHDRAWN, updated=T1), odd_unit],
                          [_value(1.3, updated=T2), _value(1.4, updated=T2) | {"id": "cr2"}])
    assert sorted(con.execute("SELECT source_id, numeric_value FROM events WHERE code = 'LOINC/2160-0'")
                  .fetchall()) == [("cr1", 1.3), ("cr2", 1.4)]
    assert not [r for r in report["reasons"] if r.startswith(("loaded without events", "loaded, value not read"))]
    assert report["reasons"]["skipped: superseded by a newer version in the same run"] == 2
    assert con.execute("SELECT count(*) FROM resources WHERE withdrawn IS NOT NULL").fetchone() == (0,)
    # the other way round, the withdrawal stands: reported once, and marked in the resource index
    (tmp_path / "x").mkdir()
    report, con = _ingest(tmp_path / "x", [PAT, _meta(WITHDRAWN, updated=T2)], [_value(1.3, updated=T1)])
    assert report["reasons"]["loaded without events: Observation entered-in-error"] == 1
    assert con.execute("SELECT withdrawn FROM resources WHERE resource_key = 'Observation/cr1'").fetchall() == [
        ("Observation entered-in-error",)]
