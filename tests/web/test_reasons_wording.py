"""The dashboard's reasons and data table say "at discharge" only for a stay that has ended: a current inpatient's
last values over the stay are the "latest" so far (the session's trained bundle and hospital, no browser)."""

from __future__ import annotations

from pathlib import Path

from careloop.serve.app import Service
from careloop.serve.config import load_config
from careloop.web.data import timeline, worklist
from tests.fhir_server.harness import make_rsa_key
from tests.serve.harness import write_config


def _words(tl) -> list[str]:
    return [d["title"] for d in tl.data] + [d["phrase"] for d in tl.data] + [r.phrase for r in tl.reasons]


def test_only_a_discharge_is_at_discharge(trained_bundle, hospital_store, tmp_path: Path):
    _, jwk = make_rsa_key()
    cfg = write_config(tmp_path, state=f"sqlite:///{tmp_path / 'state.db'}", jwks={"keys": [jwk]}, port=8999)
    service = Service(trained_bundle, load_config(cfg))
    store = hospital_store[0]
    wl = worklist(service, store)
    current = [r for r in wl["current"] if r.assessment.risk is not None]
    recent = [r for r in wl["recent"] if r.assessment.risk is not None]
    assert current and recent
    assert not [p.phrase for r in current for p in r.reasons if "discharge" in p.phrase and "previous" not in p.phrase]
    still_in = timeline(service, store, current[0].encounter_id)
    assert still_in is not None and still_in.stay["end"] is None
    assert not [w for w in _words(still_in) if "at discharge" in w]
    assert any(d["title"].startswith("latest ") and d["phrase"].startswith("latest ") for d in still_in.data)
    ended = timeline(service, store, recent[0].encounter_id)
    assert ended is not None and ended.stay["end"] is not None
    assert any(d["title"].endswith(" at discharge") and d["phrase"].endswith(" at discharge") for d in ended.data)
