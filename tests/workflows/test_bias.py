"""With the `bias` scenario (a group's chronic conditions half unrecorded), the report flags that group, and only it.

A 20,000-patient hospital: at 5,000 the Black group's test split (about 60 stays) is too small for any honest test.
Without the scenario the session's hospital raises no flag (tests/workflows/test_train_store.py), and at 200,000
patients neither does the bench's (bench/train.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from careloop.ingest.runner import ingest

from ..conftest import make_hospital
from .conftest import run_cli

pytestmark = pytest.mark.scale  # a 20,000-patient hospital: in CI, not in the default run (`make test-scale`)


@pytest.fixture(scope="module")
def biased_report(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("biased")
    hospital = make_hospital(root / "hospital", patients=20000, seed=7, workers=2, scenarios=("bias",))
    store = root / "store"
    ingest([hospital / "ndjson"], store, workers=2)
    res = run_cli("train", "--task", "readmission-30d", "--store", store, "--registry", root / "reg",
                  "--n-boot", 300)
    assert res.exit_code == 0, res.output
    bundle = Path(res.output.strip().splitlines()[-1])
    return json.loads((bundle / "report.json").read_text())


def test_the_under_recorded_group_is_flagged_and_only_it(biased_report):
    flags = biased_report["fairness"]["flags"]
    assert flags, "the under-recorded group was not flagged"
    assert {(f["attribute"], f["group"]) for f in flags} == {("race", "2054-5")}  # CDC code: Black
    rec = next(f for f in flags if f["metric"].startswith("recorded"))
    assert rec["gap"]["estimate"] < -0.25 and rec["gap"]["ci"][1] < 0 and rec["p_adjusted"] < 0.05
    assert "under-recorded" in rec["message"] and "Black or African American" in rec["message"]


def test_recording_findings_cover_every_reported_group(biased_report):
    rec = biased_report["fairness"]["recording"]
    cols = {f["column"] for f in rec["findings"]}
    assert cols == {"charlson_index", "elixhauser_vw"}
    groups = {(f["attribute"], f["group"]) for f in rec["findings"]}
    assert ("race", "2106-3") in groups and ("sex", "female") in groups
    white = next(f for f in rec["findings"] if f["group"] == "2106-3" and f["column"] == "charlson_index")
    assert not white["flagged"] and abs(white["gap"]["estimate"]) < 0.25
