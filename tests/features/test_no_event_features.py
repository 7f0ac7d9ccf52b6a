"""A feature set in which no feature reads events (only the stay's own attributes) is computed by every engine:
Spark failed to plan the events query that filtered events on FALSE (ASSIGNMENT_ARITY_MISMATCH)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from careloop.features.spec import FeatureSet
from tests.features.three_ways import PATIENT, P, features_three_ways, inpatient_stay, tiny_store

ADMIT, INDEX = dt.datetime(2023, 5, 1, 10, tzinfo=dt.UTC), dt.datetime(2023, 5, 5, 22, tzinfo=dt.UTC)
ENCOUNTER = inpatient_stay("e1", ADMIT, INDEX)
SODIUM = {"resourceType": "Observation", "id": "s1", "status": "final", "subject": P,
          "effectiveDateTime": (INDEX - dt.timedelta(hours=3)).isoformat(),
          "code": {"coding": [{"system": "http://loinc.org", "code": "2951-2"}]},
          "valueQuantity": {"value": 131.0, "unit": "mmol/L", "system": "http://unitsofmeasure.org", "code": "mmol/L"}}
FS = FeatureSet.model_validate({"name": "t", "description": "the stay alone", "features": [
    {"name": "los_days", "kind": "length_of_stay", "description": "Days in hospital"},
    {"name": "emergent", "kind": "emergent", "description": "Emergency admission"}]})


@pytest.mark.scale  # a Spark session: with the slow runs (make test-scale, run by CI)
def test_a_feature_set_reading_no_events_runs_on_every_engine(tmp_path: Path):
    store = tiny_store(tmp_path, {"Patient": [PATIENT], "Encounter": [ENCOUNTER], "Observation": [SODIUM]})
    got = {k: row["los_days"] for k, row in features_three_ways(store, FS, "e1", "p1", ADMIT, INDEX).items()}
    assert got == {"duckdb": 4.5, "spark": 4.5, "evaluator": 4.5}  # by hand: 4 days and 12 hours
