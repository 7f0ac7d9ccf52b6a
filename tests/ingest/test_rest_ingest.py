"""`careloop ingest http://...` end to end against a real FHIR server (Medplum on loopback, tests/fhir_server)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from careloop.ingest.runner import ingest
from careloop.store import EventStore
from tests.conftest import SHARED
from tests.fhir_server.harness import FhirServer, make_ec_key, run_fhir_server

BUNDLES = SHARED / "fixtures" / "synthea-r4-bundles"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FhirServer, Path, str, Counter]]:
    pem, jwk = make_ec_key()
    key = tmp_path_factory.mktemp("keys") / "client.pem"
    key.write_bytes(pem)
    clients = [{"client_id": "careloop", "jwks": {"keys": [jwk]}, "token_ttl": 3}]
    reference = sorted(BUNDLES.glob("hospitalInformation*")) + sorted(BUNDLES.glob("practitionerInformation*"))
    patients = sorted(p for p in BUNDLES.glob("*.json.gz") if p not in reference)[:4]
    held: Counter = Counter()
    with run_fhir_server(static_token="t0ken-for-tests", clients=clients) as srv:
        for path in [*reference, *patients]:
            for entry in srv.load_bundle(path)["entry"]:
                held[entry["response"]["location"].split("/")[0]] += 1
        yield srv, key, jwk["kid"], held


def test_smart_backend_services_ingest_reconciles_with_the_server(server, tmp_path: Path):
    srv, key, kid, held = server
    types = ("Patient", "Encounter", "Condition", "Observation", "MedicationRequest", "Procedure", "Organization",
             "Practitioner")
    opts = {"client_id": "careloop", "private_key_pem": key.read_bytes(), "key_id": kid, "algorithm": "ES384",
            "token_url": srv.token_url, "types": types, "page_size": 37}
    report = ingest([srv.base_url], tmp_path / "store", workers=2, rest_options=opts)
    d = report.to_json()
    assert d["reconciled"] and d["quarantined"] == 0
    for t in types:
        assert report.by_type[t]["input"] == held[t], t
    con = EventStore.open(tmp_path / "store").connect()
    assert con.execute("SELECT count(*) FROM patients").fetchone()[0] == held["Patient"]
    n_obs = con.execute("SELECT count(DISTINCT source_id) FROM events WHERE source_resource = 'Observation'"
                        ).fetchone()[0]
    assert n_obs == held["Observation"]
    stats = srv.stats()
    assert stats["token_grants"] >= 1
    again = ingest([srv.base_url], tmp_path / "store", workers=2, rest_options=opts).to_json()
    assert again["loaded"] == 0 and again["skipped"] == again["input"] == d["input"]


def test_cli_ingest_from_a_server_with_a_bearer_token(server, tmp_path: Path):
    srv, *_ = server
    cmd = [sys.executable, "-m", "careloop.cli", "ingest", srv.base_url, "--store", str(tmp_path / "s"), "--json",
           "--types", "Patient,Encounter", "--page-size", "5"]
    ok = subprocess.run(cmd, capture_output=True, text=True, env={"CARELOOP_FHIR_TOKEN": "t0ken-for-tests",
                                                                    "PATH": "/usr/bin:/bin"})
    assert ok.returncode == 0, ok.stderr
    report = json.loads(ok.stdout)
    assert set(report) >= {"input", "loaded", "quarantined", "skipped", "by_type"}
    assert report["by_type"]["Patient"]["loaded"] == server[3]["Patient"]
    bad = subprocess.run([*cmd[:-2], "--store", str(tmp_path / "s2")], capture_output=True, text=True,
                         env={"CARELOOP_FHIR_TOKEN": "wrong-token", "PATH": "/usr/bin:/bin"})
    assert bad.returncode == 2
    assert "wrong-token" not in bad.stderr and "Traceback" not in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
