"""The training reference `careloop train` stores in the bundle (`monitor_reference.json`), and how `monitor` uses it:
recomputed here independently from the training rows; a patient-split bundle trained before the drift; another
hospital's store; a tampered, malformed or missing reference file; a config asking for other bins."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import os
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from careloop.errors import CareloopError
from careloop.monitor import MonitorError, monitor
from careloop.monitor.cli import run_monitor
from careloop.registry import BundleIntegrityError, Registry, verify

REFERENCE = "monitor_reference.json"


# ---------------------------------------------------------------------------------------------------------------------
# helpers, written from the rule's words rather than from careloop.monitor's code


def _training_rows(bundle: Path, store: Path) -> pa.Table:
    """The labelled rows the bundle was trained and calibrated on, rebuilt from its training store."""
    from careloop.workflows._data import from_store

    src = verify(bundle).metadata["source"]
    end = dt.datetime.fromisoformat(src["data_end"]) if src.get("data_end_given") else None
    data = from_store(store, str(bundle / "task.yaml"), data_end=end)
    return data.table.filter(pc.is_valid(data.table.column("label")))


def _year_before(t: dt.datetime) -> dt.datetime:
    try:
        return t.replace(year=t.year - 1)
    except ValueError:  # 29 February
        return t.replace(year=t.year - 1, day=28)


def _window(rows: pa.Table) -> tuple[pa.Table, pa.Table]:
    """(training rows of the last 12 months before the last training stay, calibration rows of the same months)."""
    train = rows.filter(pc.equal(rows.column("split"), "train"))
    lo = _year_before(pc.max(train.column("index_time")).as_py())

    def recent(t: pa.Table) -> pa.Table:
        return t.filter(pc.greater_equal(t.column("index_time"), pa.scalar(lo, t.column("index_time").type)))
    return recent(train), recent(rows.filter(pc.equal(rows.column("split"), "calibration")))


def _numeric(col) -> bool:
    t = col.type
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t) or pa.types.is_null(t)


def _expected_edges(x: np.ndarray, bins: int = 10) -> list[float]:
    """A column of at most `bins` values: each value v a bin [v, next float) of its own, so the gaps around it are
    bins too; otherwise the `bins` quantiles, plus such a bin for every value holding a bin's share of the rows."""
    values, counts = np.unique(x, return_counts=True)
    few = len(values) <= bins
    points = values if few else values[counts >= len(x) / bins]
    cuts = [] if few else np.quantile(x, np.linspace(0, 1, bins + 1)[1:-1]).tolist()
    return sorted({*cuts, *points.tolist(), *np.nextafter(points, np.inf).tolist()})


def _expected_counts(values, kind: str, edges: list[float], categories: list[str]) -> list[int]:
    if kind == "numeric":
        x = np.array([np.nan if v is None else float(v) for v in values], dtype=float)
        ok = x[np.isfinite(x)]
        if not edges:
            return [len(ok), len(x) - len(ok)]
        out = [int((ok < edges[0]).sum())]
        out += [int(((ok >= a) & (ok < b)).sum()) for a, b in itertools.pairwise(edges)]
        return [*out, int((ok >= edges[-1]).sum()), len(x) - len(ok)]
    text = [None if v is None else ("true" if v is True else "false" if v is False else str(v)) for v in values]
    c = Counter(t for t in text if t is not None)
    return [c[k] for k in categories] + [sum(n for k, n in c.items() if k not in categories),
                                          sum(t is None for t in text)]


def _expected_categories(values, max_categories: int) -> list[str]:
    text = [("true" if v is True else "false" if v is False else str(v)) for v in values if v is not None]
    c = Counter(text)
    ranked = sorted(c, key=lambda k: (-c[k], k))
    return [k for k in ranked if c[k] >= 0.01 * len(text)][:max_categories]


def _registered_copy(bundle: Path, root: Path, *, drop: tuple[str, ...] = (), edit=None) -> Path:
    """A copy of `bundle` with files dropped or edited, registered as a bundle of its own (valid hashes)."""
    staging = root / "staging"
    shutil.copytree(bundle, staging)
    for p in staging.iterdir():
        os.chmod(p, 0o644)
    (staging / "MANIFEST.json").unlink()
    for name in drop:
        (staging / name).unlink()
    if edit:
        edit(staging)
    return Registry(root / "registry").register(staging, "readmission-30d").path


def _inputs_of(report_or_ref: dict) -> dict:
    return {k: (v["binning"]["edges"], v["binning"]["categories"], v["counts"], v["rows"], v["patients"])
            for k, v in report_or_ref["columns"].items()}


# ---------------------------------------------------------------------------------------------------------------------
# (a) the stored reference is the training rows' histograms


@pytest.mark.parametrize("which", ["time_split", "patient_split"])
def test_the_stored_reference_is_the_histograms_of_the_training_rows(which, drift_site, patient_split):
    bundle = drift_site["bundle"] if which == "time_split" else patient_split["bundle"]
    b = verify(bundle)
    assert REFERENCE in b.files  # hashed with the bundle
    doc = json.loads((bundle / REFERENCE).read_text())
    meta = b.metadata
    assert doc["schema"] == "careloop.monitor-reference/1" and doc["months"] == 12
    assert set(doc["columns"]) == set(meta["features"])

    rows = _training_rows(bundle, drift_site["store"])
    train, calib = _window(rows)
    assert doc["rows"] == train.num_rows > 200
    assert doc["patients"] == len(set(train.column("patient_id").to_pylist()))
    times = train.column("index_time")
    assert doc["first_index"] == pc.min(times).as_py().isoformat(timespec="seconds")
    assert doc["last_index"] == pc.max(times).as_py().isoformat(timespec="seconds")
    dev = rows.filter(pc.is_in(rows.column("split"), pa.array(["train", "calibration"])))
    assert doc["development_last_index"] == pc.max(dev.column("index_time")).as_py().isoformat(timespec="seconds")

    for c, ref in doc["columns"].items():
        values = train.column(c).to_pylist()
        kind = ref["binning"]["kind"]
        assert kind == ("numeric" if _numeric(train.column(c)) else "categorical"), c
        if kind == "numeric":
            x = np.array([np.nan if v is None else float(v) for v in values], dtype=float)
            x = x[np.isfinite(x)]
            want = _expected_edges(x) if len(x) else []
            assert ref["binning"]["edges"] == pytest.approx(want, rel=1e-12, abs=0), c
        else:
            assert ref["binning"]["categories"] == _expected_categories(values, doc["max_categories"]), c
        assert ref["counts"] == _expected_counts(values, kind, ref["binning"]["edges"],
                                                 ref["binning"]["categories"]), c
        assert ref["rows"] == train.num_rows and ref["missing"] == pytest.approx(ref["counts"][-1] / train.num_rows)

    # the risk score: the final model on the calibration rows of the same months
    risk = b.model().predict_proba(calib)
    score = doc["score"]
    assert doc["score_split"] == "calibration" and score["rows"] == calib.num_rows > 50
    assert score["binning"]["edges"] == pytest.approx(_expected_edges(risk), rel=1e-9)
    assert score["counts"] == _expected_counts(risk.tolist(), "numeric", score["binning"]["edges"], [])
    threshold = meta["operating_point"]["threshold"]
    assert doc["mean_risk"] == pytest.approx(float(risk.mean()), rel=1e-9)
    assert doc["flag_rate"] == pytest.approx(float((risk >= threshold).mean()))

    # the stays used to develop the model, by the pseudonyms of predictions.parquet
    from careloop.workflows.train import pseudonym

    for split in ("train", "calibration"):
        ids = rows.filter(pc.equal(rows.column("split"), split)).column("row_id").to_pylist()
        assert doc["development"][split] == sorted(pseudonym(ids, "row"))


def test_train_data_end_leaves_out_what_came_after(patient_split, drift_site) -> None:
    meta = verify(patient_split["bundle"]).metadata
    cut = dt.datetime.combine(patient_split["data_end"], dt.time(), dt.UTC)
    assert meta["source"]["data_end"].startswith(cut.date().isoformat()) and meta["source"]["data_end_given"]
    rows = _training_rows(patient_split["bundle"], drift_site["store"])
    # every labelled stay's 30-day window closed by the cut; the splits are the task's (by patient)
    assert pc.max(rows.column("index_time")).as_py() <= cut - dt.timedelta(days=30)
    assert set(rows.column("split").to_pylist()) == {"train", "calibration", "test"}
    report = json.loads((patient_split["bundle"] / "report.json").read_text())
    assert report["data"]["splits"]["test"]["last_index"] < cut.isoformat()
    assert "--data-end" in report["data"]["source"]


# ---------------------------------------------------------------------------------------------------------------------
# (b) a patient-split bundle trained before onset, on the drifting hospital


@pytest.fixture(scope="module")
def patient_report(patient_split, drift_site) -> dict:
    return monitor(patient_split["bundle"], drift_site["store"], period="quarter").to_dict()


def test_a_patient_split_bundle_is_quiet_before_onset_and_names_creatinine_after(patient_report, drift_site) -> None:
    r = patient_report
    onset = drift_site["onset"].isoformat()
    assert r["reference"]["source"] == "bundle" and r["notes"] == []
    # monitoring starts with the first quarter after the model's development data (which ends before 2022-07-01)
    assert r["periods"][0]["start"] == "2022-07-01" and r["reference"]["last_index"] < "2022-07-01"
    before = [p for p in r["periods"] if p["end"] <= onset]
    assert len(before) == 2 and all(p["tested"] for p in before)
    assert [a for p in before for a in p["alerts"]] == []
    first = next(p for p in r["periods"] if p["start"] >= onset)
    assert first["start"] == onset and first["complete"]
    named = {a["feature"] for a in first["alerts"] if a["kind"] == "input_drift"}
    assert any(f.startswith("creatinine_") for f in named), first["alerts"]
    assert first["input_drift"][0]["feature"].startswith("creatinine_")
    assert all(p["performance"]["development_rows"] == 0 for p in r["periods"])


def test_development_stays_are_left_out_of_performance_exactly(patient_split, drift_site) -> None:
    """Over the training years of its own store, the stays listed in the bundle are left out of the performance
    figures, and no others."""
    from careloop.engines import DuckDBEngine
    from careloop.tasks.cohort import build_cohort
    from careloop.tasks.spec import Task
    from careloop.workflows.train import pseudonym

    bundle = patient_split["bundle"]
    r = monitor(bundle, drift_site["store"], period="year", start="2021-01-01", end="2023-01-01").to_dict()
    doc = json.loads((bundle / REFERENCE).read_text())
    dev = set(doc["development"]["train"]) | set(doc["development"]["calibration"])
    eng = DuckDBEngine(drift_site["store"])
    try:
        cohort = build_cohort(Task.from_text((bundle / "task.yaml").read_text()), eng).table
    finally:
        eng.close()
    ids = pseudonym(cohort.column("encounter_id").to_pylist(), "row")
    years = [t.year for t in cohort.column("index_time").to_pylist()]
    for p in r["periods"]:
        year = int(p["start"][:4])
        want = sum(1 for i, y in zip(ids, years, strict=True) if y == year and i in dev)
        assert p["performance"]["development_rows"] == want > 100, p["start"]
        assert p["performance"]["labelled"] + want <= p["stays"]
    assert any("used to develop the model" in n for n in r["notes"])


# ---------------------------------------------------------------------------------------------------------------------
# another hospital's store


def test_another_hospitals_store_is_monitored_with_the_bundles_reference(patient_split, hospital_store) -> None:
    store = hospital_store[0]
    r = monitor(patient_split["bundle"], store, period="quarter").to_dict()
    assert r["reference"]["source"] == "bundle"
    stored = json.loads((patient_split["bundle"] / REFERENCE).read_text())
    assert _inputs_of(r["reference"]) == _inputs_of(stored)
    assert r["periods"][0]["start"] == "2022-07-01" and r["periods"][-1]["end"] == "2025-01-01"
    assert all(p["performance"]["development_rows"] == 0 for p in r["periods"])
    assert sum(p["tested"] for p in r["periods"]) >= 6  # quarters of this smaller hospital with 100 stays or more
    assert not any("develop" in n for n in r["notes"])
    # a hospital of the same health system without drift: nothing to report
    assert [a for p in r["periods"] for a in p["alerts"]] == []
    # rebuilding the reference needs the training stays, which this store does not hold
    with pytest.raises(MonitorError, match=r"none of the bundle's training stays.*bins 10"):
        monitor(patient_split["bundle"], store, period="quarter", config={"bins": 5})


# ---------------------------------------------------------------------------------------------------------------------
# (c) tampered, malformed or missing reference files; another config


def test_a_tampered_reference_fails_verification(drift_site, tmp_path: Path) -> None:
    copy = tmp_path / drift_site["bundle"].name
    shutil.copytree(drift_site["bundle"], copy)
    path = copy / REFERENCE
    os.chmod(path, 0o644)
    doc = json.loads(path.read_text())
    doc["columns"]["creatinine_last"]["counts"][0] += 1
    path.write_text(json.dumps(doc, indent=1))
    with pytest.raises(BundleIntegrityError, match=f"{REFERENCE} was modified"):
        verify(copy)
    with pytest.raises(CareloopError, match=REFERENCE):
        run_monitor(copy, drift_site["store"], tmp_path / "out", "quarter", None, None)
    path.unlink()
    with pytest.raises(BundleIntegrityError, match=f"{REFERENCE} is missing"):
        verify(copy)
    assert not (tmp_path / "out" / "monitor.json").exists()


def test_a_malformed_reference_stops_with_its_name(drift_site, tmp_path: Path) -> None:
    def edit(folder: Path) -> None:
        doc = json.loads((folder / REFERENCE).read_text())
        doc["schema"] = "careloop.monitor-reference/0"
        (folder / REFERENCE).write_text(json.dumps(doc))

    bad = _registered_copy(drift_site["bundle"], tmp_path, edit=edit)
    with pytest.raises(MonitorError, match=rf"{REFERENCE}: schema"):
        monitor(bad, drift_site["store"], period="quarter")


def test_a_bundle_without_a_reference_falls_back_with_a_note(drift_site, quarterly, tmp_path: Path) -> None:
    """A bundle made before references were stored: rebuilt from its training store by the task's split rule, it
    is the same reference, and the report says how it was made."""
    _, report, _ = quarterly
    old = _registered_copy(drift_site["bundle"], tmp_path, drop=(REFERENCE,))
    out = tmp_path / "out"
    run_monitor(old, drift_site["store"], out, "quarter", None, None)
    r = json.loads((out / "monitor.json").read_text())
    assert any("made before careloop stored the monitoring reference" in n for n in r["notes"])
    assert r["reference"]["source"].startswith("rebuilt from the training stays") and "split rule" in \
        r["reference"]["source"]
    assert "reference" in r["timings_s"]
    assert _inputs_of(r["reference"]) == _inputs_of(report["reference"])
    assert r["reference"]["score"]["counts"] == report["reference"]["score"]["counts"]
    assert [p["start"] for p in r["periods"]] == [p["start"] for p in report["periods"]]
    assert [[(a["kind"], a.get("feature")) for a in p["alerts"]] for p in r["periods"]] == \
        [[(a["kind"], a.get("feature")) for a in p["alerts"]] for p in report["periods"]]
    # the rebuilt reference is kept in OUT and reused by the next run
    run_monitor(old, drift_site["store"], out, "quarter", None, None)
    again = json.loads((out / "monitor.json").read_text())
    assert "reference" not in again["timings_s"] and any("reused" in n for n in again["notes"])
    assert _inputs_of(again["reference"]) == _inputs_of(r["reference"])


def test_a_config_asking_for_other_bins_rebuilds_with_a_note(drift_site, quarterly) -> None:
    r = monitor(drift_site["bundle"], drift_site["store"], period="quarter", config={"bins": 5}).to_dict()
    assert any("bins 5" in n and "bins 10" in n and "rebuilt" in n for n in r["notes"])
    assert r["reference"]["bins"] == 5 and "pseudonyms" in r["reference"]["source"]
    numeric = {c: v for c, v in r["reference"]["columns"].items() if v["binning"]["kind"] == "numeric"}
    train, _ = _window(_training_rows(drift_site["bundle"], drift_site["store"]))
    for c, v in numeric.items():
        x = np.array([np.nan if t is None else float(t) for t in train.column(c).to_pylist()], dtype=float)
        x = x[np.isfinite(x)]
        assert v["binning"]["edges"] == pytest.approx(_expected_edges(x, 5) if len(x) else [], rel=1e-12, abs=0), c
    assert numeric
    _, report, _ = quarterly
    assert r["reference"]["rows"] == report["reference"]["rows"]  # the same training rows, found by pseudonym
    assert r["periods"][0]["start"] == report["periods"][0]["start"]


# ---------------------------------------------------------------------------------------------------------------------
# the command line


def test_the_command_line_takes_start_end_and_data_end(patient_split, drift_site, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from careloop.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["monitor", "--model", str(patient_split["bundle"]), "--store", str(drift_site["store"]),
                              "--out", str(tmp_path / "out"), "--period", "month", "--start", "2023-01-01",
                              "--end", "2023-04-01", "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)
    assert summary["first"] == "2023-01-01" and summary["last"] == "2023-04-01" and summary["periods"] == 3
    bad = runner.invoke(app, ["monitor", "--model", str(patient_split["bundle"]), "--store", str(drift_site["store"]),
                              "--out", str(tmp_path / "out"), "--start", "2023-02-30"])
    assert bad.exit_code == 2 and "--start" in bad.output
    early = runner.invoke(app, ["train", "--task", "readmission-30d", "--store", str(drift_site["store"]),
                                "--registry", str(tmp_path / "reg"), "--data-end", "2000-01-01"])
    assert early.exit_code == 2 and "no index stays of task readmission-30d up to --data-end 2000-01-01" in \
        early.output
