"""A bundle with a learned deferral policy: the service defers in the policy's regions and audits its hash."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pyarrow.compute as pc
import pytest
from typer.testing import CliRunner

from careloop.cli import app as cli
from careloop.deferral import DeferralPolicy
from careloop.engines import DuckDBEngine
from careloop.features.engine import extract
from careloop.features.spec import load_feature_set
from careloop.registry import verify
from careloop.tasks.cohort import build_cohort
from careloop.tasks.spec import load_task
from tests.fhir_server.harness import make_rsa_key

from .harness import Running, bearer, free_port, hook_request, patient_resources, prefetch_of, write_config


@pytest.fixture(scope="module")
def team_bundle(hospital_store, hospital, tmp_path_factory) -> Path:
    reg = tmp_path_factory.mktemp("team-registry")
    res = CliRunner().invoke(cli, ["train", "--task", "readmission-30d", "--store", str(hospital_store[0]),
                                   "--registry", str(reg), "--n-boot", "200", "--clinician",
                                   str(hospital / "truth" / "stays.parquet")])
    assert res.exit_code == 0, res.output
    return Path(res.output.strip().splitlines()[-1])


def test_team_section_and_policy_in_the_bundle(team_bundle):
    rep = json.loads((team_bundle / "report.json").read_text())
    team = rep["team"]
    for who in ("clinician_alone", "ai_alone"):
        assert {"sensitivity", "specificity", "deferral_rate"} <= set(team[who])
    assert 0 <= team["deferral_rate"]["estimate"] <= 1 and team["workload_curve"]
    policy = DeferralPolicy.from_json((team_bundle / "deferral_policy.json").read_text())
    assert team["policy"]["hash"] == policy.hash
    assert "deferral_policy.json" in verify(team_bundle).files  # hashed with the bundle


def test_service_defers_inside_the_policy_and_audits_its_hash(team_bundle, hospital_store, hospital, tmp_path):
    policy = DeferralPolicy.from_json((team_bundle / "deferral_policy.json").read_text())
    if not policy.to_dict()["intervals"]:
        pytest.skip("the learned policy defers nothing on this hospital")
    eng = DuckDBEngine(hospital_store[0])
    cohort = build_cohort(load_task("readmission-30d"), eng).table
    cohort = cohort.filter(pc.equal(cohort.column("split"), "test"))
    feats = extract(load_feature_set("readmission"), cohort, eng).table
    risk = verify(team_bundle).model().predict_proba(feats)
    inside = np.flatnonzero(policy.defers(risk))
    assert len(inside), "no test stay falls in a deferral region"
    row = feats.take([int(inside[0])]).to_pylist()[0]
    res = patient_resources(hospital / "ndjson", {row["patient_id"]})
    pem, jwk = make_rsa_key()
    port = free_port()
    cfg = write_config(tmp_path, state=f"sqlite:///{tmp_path / 's.db'}", jwks={"keys": [jwk]}, port=port)
    running = Running(team_bundle, cfg, port)
    try:
        url = f"{running.url}/cds-services/readmission-risk"
        body = hook_request(row["patient_id"], row["encounter_id"], prefetch_of(res[row["patient_id"]]))
        r = httpx.post(url, json=body, headers=bearer(pem, jwk["kid"], url), timeout=30)
        (card,) = r.json()["cards"]
        assert card["indicator"] == "info" and "defers to clinical judgement" in card["summary"]
        assert policy.hash[:12] in card["detail"]
        audit = json.dumps(running.service.audit.records(), default=str)
        assert policy.hash in audit
    finally:
        running.stop()
