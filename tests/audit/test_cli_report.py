"""`careloop audit report | export | check-export | purge`: the audit report, export and retention for governance
staff (ONC (d)(3), EU AI Act retention), on SQLite and PostgreSQL; each reading of the log is itself audited."""

from __future__ import annotations

import csv
import json
from datetime import UTC, datetime, timedelta

import pytest
from fhir.resources.R4B.bundle import Bundle
from typer.testing import CliRunner

from careloop.audit import AuditLog
from careloop.audit.report import COLUMNS, parse_bound
from careloop.cli import app as cli
from tests.audit.helpers import T0, make_events

EVENTS = make_events(40)


@pytest.fixture
def url(db_url):
    with AuditLog.open(db_url) as log:
        log.append_many(EVENTS[20:] + EVENTS[:20])  # recorded order differs from seq order
    return db_url


def run(*args: str):
    res = CliRunner().invoke(cli, ["audit", *args], env={"COLUMNS": "240"})
    assert "Traceback" not in res.output
    return res


def _exports(url: str) -> list[dict]:
    with AuditLog.open(url) as log:
        return log.records(kind="export")


def test_report_as_json_selects_a_range_and_a_patient_sorted_by_any_field_and_is_itself_audited(url):
    res = run("report", "--state", url, "--since", "2025-03-01T08:00:10", "--until", "2025-03-01T08:00:30Z",
              "--sort", "-score", "--json", "--by", "governance-7")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    with AuditLog.open(url) as log:
        expected = log.records(T0 + timedelta(seconds=10), T0 + timedelta(seconds=30), sort="-score")
    assert doc["count"] == 20 and doc["columns"] == list(COLUMNS)
    assert [r["seq"] for r in doc["records"]] == [r["seq"] for r in expected]
    scores = [r["score"] for r in doc["records"]]
    assert scores == sorted(scores, reverse=True)
    assert {r["recorded"] for r in doc["records"]} == {
        (T0 + timedelta(seconds=s)).strftime("%Y-%m-%dT%H:%M:%S.000000Z") for s in range(10, 30)}
    one = run("report", "--state", url, "--patient", "p3", "--json", "--by", "governance-7")
    assert {r["patient"] for r in json.loads(one.output)["records"]} == {"p3"}
    assert json.loads(one.output)["count"] == 4
    audited = _exports(url)
    assert [(e["detail"]["action"], e["detail"]["by"], e["detail"]["count"], e["detail"]["format"])
            for e in audited] == [("audit-report", "governance-7", "20", "json"),
                                  ("audit-report", "governance-7", "4", "json")]
    assert audited[1]["detail"]["patients"] == "1"
    with AuditLog.open(url) as log:
        assert log.verify().ok  # appending the reading kept the chain


def test_an_unknown_kind_is_a_usage_error_not_an_empty_report(url, tmp_path):
    for cmd in (["report", "--by", "gov"], ["export", "--out", str(tmp_path / "e.json"), "--by", "gov"]):
        res = run(*cmd, "--state", url, "--kind", "cds_call")
        assert res.exit_code == 2 and "no audit record is of kind 'cds_call'" in res.output, res.output
        assert "cds-call" in res.output
    assert not (tmp_path / "e.json").exists()
    assert _exports(url) == []  # nothing was read, so no reading is recorded


def test_report_to_csv_holds_every_field_and_the_table_prints(url, tmp_path):
    out = tmp_path / "report.csv"
    res = run("report", "--state", url, "--kind", "feedback", "--csv", str(out), "--by", "gov")
    assert res.exit_code == 0 and "wrote 6 records" in res.output
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 6 and list(rows[0]) == list(COLUMNS) and {r["kind"] for r in rows} == {"feedback"}
    for row in rows:  # seq 1 is EVENTS[20] (the fixture appended the second half first)
        i = (int(row["seq"]) - 1 + 20) % 40
        assert (row["hook_instance"], row["patient"], row["jti"]) == (f"hook-{i}", f"p{i % 10}", f"jti-{i}")
        assert float(row["score"]) == round((i * 37 % 100) / 100, 2) and len(row["entry_hash"]) == 64
    table = run("report", "--state", url, "--limit", "3", "--sort", "recorded")
    assert table.exit_code == 0 and "audit log: 3 records" in table.output
    assert "2025-03-01 08:00:00" in table.output and "2025-03-01 08:00:03" not in table.output


def test_export_is_a_valid_fhir_bundle_that_check_export_verifies_and_catches_an_edit(url, tmp_path):
    out = tmp_path / "export.json"
    res = run("export", "--state", url, "--out", str(out), "--since", "2025-03-01", "--client",
              "https://ehr1.example/iss", "--by", "gov")
    assert res.exit_code == 0 and "wrote 13 AuditEvents" in res.output, res.output
    doc = json.loads(out.read_text())
    Bundle.model_validate(doc)
    assert len(doc["entry"]) == 13 and all(e["resource"]["resourceType"] == "AuditEvent" for e in doc["entry"])
    ok = run("check-export", str(out))
    assert ok.exit_code == 0 and "export intact: 13 records" in ok.output
    doc["entry"][4]["resource"]["outcome"] = "0" if doc["entry"][4]["resource"]["outcome"] != "0" else "8"
    out.write_text(json.dumps(doc))
    bad = run("check-export", str(out))
    assert bad.exit_code == 1 and "export altered" in bad.output and "edited" in bad.output
    again = run("export", "--state", url, "--out", str(out))
    assert again.exit_code == 2 and "refusing to overwrite" in again.output
    assert [e["detail"]["format"] for e in _exports(url)] == ["fhir-bundle"]


def test_bad_arguments_get_one_clear_line(url, tmp_path):
    cases = [
        (["report", "--state", url, "--since", "yesterday"], "is not a date"),
        (["report", "--state", url, "--since", "2025-03-02", "--until", "2025-03-01"], "later than --since"),
        (["report", "--state", url, "--sort", "colour"], "cannot sort by 'colour'"),
        (["report", "--state", url, "--by", "two words"], "--by"),
        (["report", "--state", f"sqlite:///{tmp_path / 'none.db'}"], "no audit log"),
        (["check-export", str(tmp_path / "absent.json")], "cannot read it"),
    ]
    (tmp_path / "x.json").write_text('{"resourceType": "Patient"}')
    cases.append((["check-export", str(tmp_path / "x.json")], "not a FHIR Bundle"))
    for args, why in cases:
        res = run(*args)
        assert res.exit_code == 2, (args, res.output)
        assert why in " ".join(res.output.split()), (args, res.output)


def test_purge_keeps_six_months_and_leaves_a_chain_that_verifies(db_url):
    old = datetime.now(UTC) - timedelta(days=400)
    with AuditLog.open(db_url) as log:
        log.append_many(make_events(10, old) + make_events(5, datetime.now(UTC) - timedelta(days=10)))
    young = run("purge", "--state", db_url, "--before", (datetime.now(UTC) - timedelta(days=100)).isoformat(),
                "--by", "dpo-1")
    assert young.exit_code == 2 and "refusing to purge audit records younger than 183 days" in young.output
    short = run("purge", "--state", db_url, "--before", "2020-01-01", "--by", "dpo-1", "--minimum-days", "90")
    assert short.exit_code == 2 and "at least 183" in short.output
    cut = (old + timedelta(days=1)).date()
    res = run("purge", "--state", db_url, "--before", f"{cut.isoformat()}T00:00:05", "--by", "dpo-1")
    assert res.exit_code == 0 and "purged 10 records" in res.output, res.output
    assert f"before {cut.isoformat()}T00:00:05.000000Z;" in res.output  # the cut as given, to the second
    with AuditLog.open(db_url) as log:
        assert log.verify().ok
        left = log.records()
        assert [r["seq"] for r in left][:5] == [11, 12, 13, 14, 15]
        purge = [r for r in left if r["detail"].get("action") == "audit-purge"]
        assert len(purge) == 1 and (purge[0]["detail"]["count"], purge[0]["detail"]["by"]) == ("10", "dpo-1")


def test_parse_bound_reads_dates_and_zoned_or_unzoned_times_as_utc():
    assert parse_bound("2026-11-01", "--since") == datetime(2026, 11, 1, tzinfo=UTC)
    assert parse_bound("2026-11-01T10:00:00+02:00", "--since") == datetime(2026, 11, 1, 8, tzinfo=UTC)
    assert parse_bound("2026-11-01T10:00:00", "--since") == datetime(2026, 11, 1, 10, tzinfo=UTC)
    assert parse_bound("2026-11-01T10:00:00Z", "--since") == datetime(2026, 11, 1, 10, tzinfo=UTC)


def test_check_export_finds_entries_removed_from_a_whole_export_and_refuses_a_malformed_file(url, tmp_path):
    """An export of the whole log says how many records it holds and the head the log had: an entry removed from
    the middle or the end is found; a filtered export (gaps expected) still checks; a malformed file is one clear
    line, not a traceback."""
    import json as _json

    whole, part = tmp_path / "whole.json", tmp_path / "part.json"
    assert run("export", "--state", url, "--out", str(whole)).exit_code == 0
    assert run("check-export", str(whole)).exit_code == 0
    doc = _json.loads(whole.read_text())
    assert len(doc["entry"]) >= 4
    for cut, why in ((lambda e: e[:2] + e[3:], "removed"), (lambda e: e[:-1], "removed")):
        bad = dict(doc, entry=cut(doc["entry"]))
        whole.write_text(_json.dumps(bad))
        res = run("check-export", str(whole))
        assert res.exit_code == 1 and why in res.output, res.output
    # the count fixed up too: the gap (middle) or the head (tail) still tells
    for cut, why in ((lambda e: e[:2] + e[3:], "missing from an export of the whole log"),
                     (lambda e: e[:-1], "its tail was cut")):
        bad = _json.loads(_json.dumps(doc))
        bad["entry"] = cut(bad["entry"])
        for ext in bad["meta"]["extension"][0]["extension"]:
            if ext["url"] == "count":
                ext["valueInteger"] = len(bad["entry"])
        whole.write_text(_json.dumps(bad))
        res = run("check-export", str(whole))
        assert res.exit_code == 1 and why in res.output, res.output
    assert run("export", "--state", url, "--kind", "cds-call", "--out", str(part)).exit_code == 0
    assert run("check-export", str(part)).exit_code == 0
    for malformed in ({"resourceType": "Bundle", "entry": [1]}, {"resourceType": "Bundle", "entry": "x"}, [1, 2]):
        part.write_text(_json.dumps(malformed))
        res = run("check-export", str(part))
        assert res.exit_code in (1, 2) and len(res.output.strip().splitlines()) == 1, res.output



MALFORMED_EVENTS = {"a-list": "[]",
                    "agent-a-string": '{"agent":"x","recorded":"2025-03-01T08:00:04Z","resourceType":"AuditEvent"}'}


@pytest.mark.parametrize("how", [*MALFORMED_EVENTS, "recorded-not-a-time"])
def test_verify_and_report_name_a_malformed_record_in_one_line(db_url, how):
    """A record rewritten into something that is not an AuditEvent (its own hash recomputed), or whose recorded
    column holds no time: verify names it (exit 1), the report and export say so in one line (exit 2) or read
    the record from its intact event; never a traceback."""
    from careloop.audit import entry_hash
    from tests.audit.helpers import tampering

    if how == "recorded-not-a-time" and not db_url.startswith("sqlite"):
        return  # PostgreSQL's timestamptz column takes no text that is not a time
    with AuditLog.open(db_url) as log:
        log.append_many(make_events(10))
    with tampering(db_url) as conn:
        conn = conn.execution_options(no_parameters=True)
        if how == "recorded-not-a-time":
            conn.exec_driver_sql("UPDATE careloop_audit SET recorded = 'garbage' WHERE seq = 5")
        else:
            text = MALFORMED_EVENTS[how]
            prev = conn.exec_driver_sql("SELECT prev_hash FROM careloop_audit WHERE seq = 5").scalar_one()
            conn.exec_driver_sql(f"UPDATE careloop_audit SET event = '{text}', entry_hash = "
                                 f"'{entry_hash(prev, 5, text)}' WHERE seq = 5")
    res = run("verify", "--state", db_url)
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    why = "column recorded of record 5 was changed" if how == "recorded-not-a-time" else "record 5 is malformed"
    assert res.exit_code == 1 and f"audit log altered: first bad record 5 ({why}" in " ".join(res.output.split()), \
        res.output
    rep = run("report", "--state", db_url, "--by", "gov", "--json")
    assert rep.exception is None or isinstance(rep.exception, SystemExit), repr(rep.exception)
    if how == "recorded-not-a-time":
        assert rep.exit_code == 0 and json.loads(rep.output)["count"] == 10, rep.output
        return
    lines = rep.output.strip().splitlines()
    assert rep.exit_code == 2 and len(lines) == 1 and "audit record 5 is malformed" in lines[0], rep.output


def test_check_export_without_its_completeness_extension_fails_unless_told_and_names_gaps(url, tmp_path):
    """An entry removed together with the Bundle's meta (which says how many records it holds and the log's head):
    check-export cannot tell, so it fails (exit 1) unless --no-completeness, and names the gap in seq either way."""
    whole = tmp_path / "whole.json"
    assert run("export", "--state", url, "--out", str(whole)).exit_code == 0
    doc = json.loads(whole.read_text())
    assert [e["resource"]["id"] for e in doc["entry"][3:6]] == ["audit-4", "audit-5", "audit-6"]
    del doc["entry"][4], doc["meta"]
    whole.write_text(json.dumps(doc))
    res = run("check-export", str(whole))
    out = " ".join(res.output.split())
    assert res.exit_code == 1 and "export completeness unknown" in out and "cannot be checked" in out, res.output
    assert "records between 4 and 6 are missing or the export was filtered" in out
    assert "intact" not in out
    told = run("check-export", "--no-completeness", str(whole))
    out = " ".join(told.output.split())
    assert told.exit_code == 0 and "export intact: 39 records" in out and "completeness not checked" in out, out
    assert "records between 4 and 6 are missing or the export was filtered" in out
    assert "--no-completeness" in " ".join(run("check-export", "--help").output.split())


def test_check_export_lists_the_gaps_of_a_filtered_export(url, tmp_path):
    part = tmp_path / "part.json"
    assert run("export", "--state", url, "--patient", "p3", "--out", str(part)).exit_code == 0
    res = run("check-export", str(part))
    assert res.exit_code == 0 and "export intact: 4 records" in res.output, res.output
    assert [line for line in res.output.splitlines() if "missing or the export was filtered" in line] == [
        f"records between {a} and {b} are missing or the export was filtered" for a, b in ((4, 14), (14, 24), (24, 34))]


def test_check_export_checks_a_head_kept_outside(url, tmp_path):
    verified = run("verify", "--state", url, "--json")
    head = json.loads(verified.output)["head"]  # 40:HASH@TIME
    seq, hash_ = head.split("@")[0].split(":")
    whole = tmp_path / "whole.json"
    assert run("export", "--state", url, "--out", str(whole)).exit_code == 0
    for given in (head, f"{seq}:{hash_}"):
        res = run("check-export", "--expect", given, str(whole))
        assert res.exit_code == 0 and f"holds record {seq}, the head given to --expect" in res.output, res.output
    other = run("check-export", "--expect", f"{seq}:{'0' * 64}", str(whole))
    assert other.exit_code == 1 and "another hash" in other.output, other.output
    doc = json.loads(whole.read_text())
    del doc["entry"][-1], doc["meta"]  # the tail cut, and what the export says of itself removed
    whole.write_text(json.dumps(doc))
    cut = run("check-export", "--no-completeness", "--expect", head, str(whole))
    assert cut.exit_code == 1 and f"record {seq}, the head kept outside, is not in the export" in \
        " ".join(cut.output.split()), cut.output
    bad = run("check-export", "--expect", "40:xyz", str(whole))
    assert bad.exit_code == 2 and "--expect must be SEQ:HASH" in bad.output
