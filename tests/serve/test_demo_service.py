"""The service part of `make demo`, run as the Makefile runs it (relative paths, its own process): every exchange it
prints happens, the warning card's links open, and the signed audit log verifies."""

from __future__ import annotations

import json
import subprocess
import sys


def test_the_demo_service_runs_end_to_end_from_relative_paths(trained_bundle, hospital, hospital_store, tmp_path):
    (tmp_path / "bundle").symlink_to(trained_bundle)
    (tmp_path / "hospital").symlink_to(hospital)
    (tmp_path / "store").symlink_to(hospital_store[0])
    run = subprocess.run([sys.executable, "-m", "careloop.serve.demo", "--model", "bundle", "--hospital", "hospital",
                          "--store", "store", "--out", "out/service"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "audit log intact" in run.stdout and "1 signed checkpoint checked" in run.stdout, run.stdout[-1000:]
    calls = sum(1 for line in run.stdout.splitlines() if line.startswith("== ") and ": HTTP 200 in" in line)
    assert f"audit log: {calls} records" in run.stdout  # the report lists every answered CDS call
    exported = json.loads((tmp_path / "out" / "service" / "audit-export.json").read_text())
    kinds = [e["resource"]["subtype"][0]["code"] for e in exported["entry"]]
    assert kinds.count("cds-call") == calls and kinds[-1] == "export"  # the report's own reading, then the export
    assert f"wrote {len(kinds)} AuditEvents" in run.stdout and f"export intact: {len(kinds)} records" in run.stdout
    log = json.loads((tmp_path / "out" / "service" / "exchanges.json").read_text())
    statuses = {x["title"].split(" (")[0]: x["status"] for x in log}
    assert statuses["no prefetch and no FHIR access"] == 412 and statuses["a token from an untrusted issuer"] == 401
    hospice = next(x for x in log if x["title"].startswith("a discharge to hospice"))
    assert [c["indicator"] for c in hospice["response"]["cards"]] == ["info"]
    assert "discharged to hospice" in hospice["response"]["cards"][0]["detail"]
    warning = next(c for x in log for c in x["response"].get("cards", []) if c["indicator"] == "warning")
    assert "link: Patient risk page" in run.stdout and "(HTTP 303, sign-in first)" in run.stdout
    assert {link["label"] for link in warning["links"]} == {"Model card and validation report", "Patient risk page"}
    assert all(link["url"].startswith("https://127.0.0.1:") for link in warning["links"])  # the service is HTTPS only
    assert "(HTTPS only, TLS 1.2 or later" in run.stdout
    assert sorted(f.name for f in (tmp_path / "out" / "service" / "tls").iterdir()) == ["ca.pem", "server-key.pem",
                                                                                       "server.pem"]
    by_title = {x["title"].split(" (")[0]: x["response"] for x in log}
    assert [c["indicator"] for c in by_title["a 10-year-old"]["cards"]] == ["info"]
    assert by_title["the same 10-year-old again"] == {"cards": []}  # the same deferral is not repeated
    assert len(by_title["a patient in a range where clinicians judge better"]["cards"]) == 1
    assert by_title["the same discharge again"] == {"cards": []}  # nor any card, within the window
    under = by_title["the low-risk patient's discharge under the administrator's threshold"]["cards"]
    assert [c["indicator"] for c in under] == ["warning"]
    assert "set by the hospital's administrators in place of the validated" in under[0]["detail"]
    assert "held-out stays it gives" in run.stdout and "back to the bundle's operating point: HTTP 200" in run.stdout
