"""`careloop train --table`: a flat extract, one row per stay, with '?' for missing values and text labels."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

from careloop.engines import DuckDBEngine
from careloop.features.engine import extract
from careloop.features.spec import load_feature_set
from careloop.tasks.cohort import build_cohort, split_of
from careloop.tasks.spec import load_task
from careloop.workflows.train import pseudonym

from .conftest import REPO, run_cli

DOC = REPO / "documentation" / "readmission-30d.yaml"
FRACTIONS = {"train": 0.6, "calibration": 0.2, "test": 0.2}


@pytest.fixture(scope="module")
def extract_csv(hospital_store, tmp_path_factory):
    """The hospital's readmission features written the way a hospital's flat extract arrives."""
    eng = DuckDBEngine(hospital_store[0])
    cohort = build_cohort(load_task("readmission-30d"), eng).table
    f = extract(load_feature_set("readmission"), cohort, eng).table
    cols = {"encounter_id": f.column("encounter_id"), "patient_nbr": f.column("patient_id"),
            "readmitted": pa.array(["?" if v is None else "<30" if v else "NO"
                                    for v in f.column("label").to_pylist()])}
    for name in ("age", "sex", "race", "payer", "los_days", "emergent_admission", "admissions_180d",
                 "ed_visits_180d", "charlson_index", "sodium_last", "hemoglobin_min", "albumin_min",
                 "discharge_disposition", "medications_in_stay", "days_since_last_discharge"):
        cols[name] = f.column(name)
    cols["admission_type_id"] = pa.array([1 if e else 3 for e in f.column("emergent_admission").to_pylist()])
    cols["clerk_note_id"] = pa.array([f"n-{i:06d}" for i in range(f.num_rows)])  # identifier-like text
    t = pa.table(cols)
    as_text = pa.table({k: pc.fill_null(pc.cast(v, pa.string()), "?") for k, v in zip(t.column_names, t.columns,
                                                                                      strict=True)})
    path = tmp_path_factory.mktemp("flat") / "diabetic_like.csv"
    pcsv.write_csv(as_text, path)
    return path, t


@pytest.fixture(scope="module")
def flat_bundle(extract_csv, tmp_path_factory):
    path, _ = extract_csv
    reg = tmp_path_factory.mktemp("flat-registry")
    res = run_cli("train", "--table", path, "--label", "readmitted", "--positive", "<30", "--id", "patient_nbr",
                  "--row-id", "encounter_id", "--group", "race", "--group", "sex", "--categorical",
                  "admission_type_id", "--categorical", "payer", "--documentation", DOC, "--registry", reg,
                  "--n-boot", 200)
    assert res.exit_code == 0, res.output
    from pathlib import Path

    return Path(res.output.strip().splitlines()[-1])


def test_inputs_exclude_ids_label_and_identifier_like_text(flat_bundle):
    rep = json.loads((flat_bundle / "report.json").read_text())
    feats = set(rep["model"]["features"])
    assert {"patient_nbr", "encounter_id", "readmitted", "clerk_note_id"}.isdisjoint(feats)
    assert {"age", "race", "sodium_last", "admission_type_id"} <= feats
    assert [d["column"] for d in rep["model"]["dropped_columns"]] == ["clerk_note_id"]
    spec = json.loads((flat_bundle / "table.json").read_text())
    assert spec["label"] == "readmitted" and spec["positive"] == "<30" and "?" in spec["missing"]
    model = json.loads((flat_bundle / "model.json").read_text())
    cats = {c["name"] for c in model["preprocessor"]["categorical"]}
    assert {"admission_type_id", "sex", "race", "payer"} <= cats


def test_question_marks_are_missing_values(flat_bundle, extract_csv):
    _, t = extract_csv
    rep = json.loads((flat_bundle / "report.json").read_text())
    miss = {m["column"]: m for m in rep["data"]["missingness"]}
    rows = [r for r in t.to_pylist() if r["readmitted"] != "?"]
    train_rows = [r for r in rows if split_of(0, r["patient_nbr"], FRACTIONS) == "train"]
    expect = sum(r["days_since_last_discharge"] is None for r in train_rows) / len(train_rows)
    assert miss["days_since_last_discharge"]["train"] == pytest.approx(expect)
    assert expect > 0


def test_splits_are_by_patient(flat_bundle):
    preds = pq.read_table(flat_bundle / "predictions.parquet")
    by_split = {}
    for s, c in zip(preds.column("split").to_pylist(), preds.column("cluster").to_pylist(), strict=True):
        by_split.setdefault(s, set()).add(c)
    assert by_split["calibration"].isdisjoint(by_split["test"])


def test_unlabelled_rows_are_left_out_and_counted(flat_bundle, extract_csv):
    _, t = extract_csv
    rep = json.loads((flat_bundle / "report.json").read_text())
    unlabelled = sum(v == "?" for v in t.column("readmitted").to_pylist())
    assert unlabelled > 0 and rep["data"]["censored"] == unlabelled
    total = sum(s["stays"] for s in rep["data"]["splits"].values())
    assert total == t.num_rows - unlabelled


def test_fairness_over_the_declared_groups(flat_bundle):
    rep = json.loads((flat_bundle / "report.json").read_text())
    assert set(rep["fairness"]["attributes"]) == {"race", "sex"}
    assert not rep["comparisons"] or all(c["reference"].startswith("careloop") for c in rep["comparisons"])


def test_predict_table_scores_every_row(flat_bundle, extract_csv, tmp_path):
    path, t = extract_csv
    out = tmp_path / "scored.csv"
    res = run_cli("predict", "--model", flat_bundle, "--table", path, "--out", out, "--json")
    assert res.exit_code == 0, res.output
    got = pcsv.read_csv(out)
    assert got.num_rows == t.num_rows
    assert got.column("id").to_pylist() == t.column("encounter_id").to_pylist()
    preds = pq.read_table(flat_bundle / "predictions.parquet")
    rep = json.loads((flat_bundle / "report.json").read_text())
    stored = dict(zip(preds.column("row").to_pylist(), preds.column(f"score:{rep['primary']}").to_pylist(),
                      strict=True))
    again = dict(zip(pseudonym(got.column("id").to_pylist(), "row"), got.column("probability").to_pylist(),
                     strict=True))
    common = stored.keys() & again.keys()
    assert len(common) == preds.num_rows
    np.testing.assert_allclose([again[k] for k in common], [stored[k] for k in common], atol=1e-12)


@pytest.mark.parametrize("args, message", [
    (["--label", "readmitted", "--positive", "yes", "--id", "patient_nbr"], "no row of 'readmitted' equals 'yes'"),
    (["--label", "readmitted", "--positive", "<30", "--id", "patient"], "--id: no column 'patient'"),
    (["--label", "outcome", "--positive", "<30", "--id", "patient_nbr"], "--label: no column 'outcome'"),
    (["--label", "readmitted", "--positive", "<30", "--id", "patient_nbr", "--group", "zip"],
     "--group: no column 'zip'"),
    (["--label", "readmitted", "--id", "patient_nbr"], "--positive is required"),
    (["--label", "readmitted", "--positive", "<30", "--id", "patient_nbr", "--data-end", "2020-01-01"],
     "--data-end applies to --store"),
    (["--label", "readmitted", "--positive", "<30", "--id", "patient_nbr", "--data-end", "2020-13-01"],
     "--data-end: '2020-13-01' is not a date"),
])
def test_bad_arguments_stop_with_one_line(extract_csv, tmp_path, args, message):
    path, _ = extract_csv
    res = run_cli("train", "--table", path, *args, "--documentation", DOC, "--registry", tmp_path / "reg")
    assert res.exit_code == 2
    assert message in res.output and "Traceback" not in res.output
    assert not (tmp_path / "reg").exists() or not any((tmp_path / "reg").iterdir())


def test_unreadable_table(tmp_path):
    bad = tmp_path / "x.xlsx"
    bad.write_text("nope")
    res = run_cli("train", "--table", bad, "--label", "y", "--id", "p", "--documentation", DOC,
                  "--registry", tmp_path / "reg")
    assert res.exit_code == 2 and "neither .csv" in res.output
