"""Discharge summaries: base64 text/plain with PHI, negations, family history, and the hidden note signal."""

from __future__ import annotations

import base64
from pathlib import Path

import pyarrow.parquet as pq

from careloop.synth.notes import _THEME_PHRASES


def _text(doc: dict) -> str:
    att = doc["content"][0]["attachment"]
    assert att["contentType"].startswith("text/plain")
    return base64.b64decode(att["data"]).decode("utf-8")


def test_every_discharged_alive_stay_has_one_discharge_summary(resources, hospital: Path):
    truth = pq.read_table(hospital / "truth" / "stays.parquet").to_pylist()
    docs = resources("DocumentReference")
    by_enc = {d["context"]["encounter"][0]["reference"].split("/")[1]: d for d in docs}
    alive = {r["encounter_id"] for r in truth if not r["died_in_hospital"]}
    assert set(by_enc) == alive
    assert all(d["type"]["coding"][0]["code"] == "18842-5" for d in docs)


def test_notes_carry_phi_negations_and_family_history(resources):
    patients = {p["id"]: p for p in resources("Patient")}
    docs = resources("DocumentReference")
    texts = [(_text(d), patients[d["subject"]["reference"].split("/")[1]]) for d in docs]
    for text, p in texts[:200]:
        assert p["name"][0]["family"] in text
        assert p["identifier"][0]["value"] in text  # the MRN
        assert p["telecom"][0]["value"] in text
    joined = "\n".join(t for t, _ in texts)
    assert "Denies chest pain." in joined or "Denies shortness of breath at rest." in joined
    assert "No evidence of" in joined
    assert "Family history:" in joined
    assert "History of " in joined


def test_the_note_signal_lives_only_in_the_text(resources, hospital: Path):
    truth = {r["encounter_id"]: r for r in pq.read_table(hospital / "truth" / "stays.parquet").to_pylist()}
    phrases = [p for group in _THEME_PHRASES.values() for p in group]
    with_signal = without = 0
    for d in resources("DocumentReference"):
        row = truth[d["context"]["encounter"][0]["reference"].split("/")[1]]
        text = _text(d)
        has_phrase = any(p in text for p in phrases)
        assert has_phrase == row["note_signal"]
        with_signal += row["note_signal"]
        without += not row["note_signal"]
    assert 0.08 <= with_signal / (with_signal + without) <= 0.35
