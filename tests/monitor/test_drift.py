"""End to end on a drifting synthetic hospital: the creatinine assay changes on 2023-01-01 and the monitor says so in
the first full period after onset, and not before. (The false-alarm rate over 10 hospitals without drift is measured
by `python bench/monitor.py --seeds 10`.)"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from careloop.errors import CareloopError
from careloop.monitor import SCHEMA, MonitorError, monitor, render_html
from careloop.monitor._periods import utc
from careloop.monitor.cli import run_monitor


def test_the_command_contract(quarterly: tuple[dict, dict, Path]) -> None:
    summary, report, out = quarterly
    assert report["schema"] == SCHEMA
    assert (out / "monitor.html").is_file() and (out / "reference.json").is_file()
    assert isinstance(report["periods"], list) and report["periods"]
    for p in report["periods"]:
        assert {"start", "end", "alerts"} <= set(p)
        for a in p["alerts"]:
            assert a["kind"] in ("input_drift", "output_drift", "performance", "calibration", "fairness", "burden")
            assert a.get("feature") or a.get("group")
            assert a["reason"] and a["p_value"] < a["p_threshold"]
    assert summary["periods"] == len(report["periods"]) and summary["json"] == str(out / "monitor.json")
    assert summary["alerts"] == sum(len(p["alerts"]) for p in report["periods"]) == len(summary["alert_list"])


def test_the_drifted_assay_is_named_in_the_first_full_period_after_onset(quarterly, drift_site: dict) -> None:
    _, report, _ = quarterly
    onset = drift_site["onset"].isoformat()
    starts = [p["start"] for p in report["periods"]]
    # monitoring starts where the training data ends
    assert starts[0] == drift_site["split"].isoformat()
    first = next(p for p in report["periods"] if p["start"] >= onset)
    assert first["start"] == onset and first["complete"]
    named = {a["feature"] for a in first["alerts"] if a["kind"] == "input_drift"}
    assert any(f.startswith("creatinine_") for f in named), first["alerts"]
    assert all(f.startswith("creatinine_") for f in named), named  # and nothing that did not drift
    top = first["input_drift"][0]
    assert top["feature"].startswith("creatinine_") and top["psi"] >= report["config"]["psi"]["act"]
    # detection delay: no period after onset goes by without the alert
    delay = [p["start"] for p in report["periods"] if p["start"] >= onset and any(
        a.get("feature", "").startswith("creatinine_") for a in p["alerts"])]
    assert delay and delay[0] == onset


def test_no_alert_before_onset(quarterly, drift_site: dict) -> None:
    _, report, _ = quarterly
    before = [p for p in report["periods"] if p["end"] <= drift_site["onset"].isoformat()]
    assert len(before) == 2 and all(p["tested"] for p in before)  # enough stays to be tested, and quiet
    assert [a for p in before for a in p["alerts"]] == []
    for p in before:
        assert max(r["psi"] for r in p["input_drift"]) < 0.25


def test_the_report_records_its_reference_and_rules(quarterly, drift_site: dict) -> None:
    _, report, _ = quarterly
    ref = report["reference"]
    assert ref["months"] == 12 and ref["rows"] > 200 and ref["patients"] <= ref["rows"]
    assert ref["last_index"] < drift_site["split"].isoformat()
    assert ref["first_index"] >= "2021-06-30"  # the last 12 months of the training split
    assert set(ref["columns"]) == set(report["model"]["features"])
    # the one stored in the bundle when it was trained (its risk histogram on the calibration split)
    stored = json.loads((drift_site["bundle"] / "monitor_reference.json").read_text())
    assert ref["source"] == "bundle" and ref["score_split"] == "calibration" and report["notes"] == []
    for k in ("rows", "patients", "first_index", "last_index", "columns", "score", "flag_rate", "mean_risk"):
        assert ref[k] == stored[k], k
    assert report["model"]["last_development_index"] == stored["development_last_index"]
    assert report["tests"]["count"] > 100 and report["tests"]["level"] == pytest.approx(
        report["tests"]["alpha"] / report["tests"]["count"])
    assert len(report["rules"]) >= 6 and report["model"]["bundle_id"] == ref["bundle_id"]
    labelled = report["periods"][-1]["performance"]
    assert labelled["pending"] > 0  # the last period's 30-day windows run past the end of the data


def test_the_bundles_reference_is_read_not_rebuilt(quarterly, drift_site: dict) -> None:
    _, report, out = quarterly
    assert "reference" not in report["timings_s"]  # no training stay's features were computed
    t0 = time.perf_counter()
    again = run_monitor(drift_site["bundle"], drift_site["store"], out, "quarter", None, None)
    assert time.perf_counter() - t0 < 60
    second = json.loads((out / "monitor.json").read_text())
    assert "reference" not in second["timings_s"]
    assert again["alerts"] == sum(len(p["alerts"]) for p in report["periods"])
    assert [p["alerts"] for p in second["periods"]] == [p["alerts"] for p in report["periods"]]
    saved = json.loads((out / "reference.json").read_text())  # OUT/reference.json: the reference the run used
    assert saved["columns"] == report["reference"]["columns"] and saved["source"] == "bundle"


def test_performance_and_subgroups_when_labels_are_enough(drift_site: dict) -> None:
    """With smaller minimums the quarters of this small hospital are evaluated: AUROC, calibration and PPV with
    bootstrap intervals, per subgroup too; and still no alert before onset."""
    cfg = {"min_labelled": 100, "min_events": 10, "n_boot": 200, "fairness": {"min_group_size": 50,
                                                                              "min_events": 10}}
    r = monitor(drift_site["bundle"], drift_site["store"], period="quarter", config=cfg).to_dict()
    evaluated = [p for p in r["periods"] if p["performance"]["evaluated"]]
    assert len(evaluated) >= 3
    for p in evaluated:
        perf = p["performance"]
        for m in ("auroc", "calibration_intercept", "calibration_slope", "ppv"):
            lo, hi = perf[m]["ci"]
            assert lo <= perf[m]["estimate"] <= hi, m
        assert 0.5 < perf["auroc"]["estimate"] < 1
        assert perf["development_rows"] == 0
        assert set(p["subgroups"]) == set(r["model"]["groups"])  # every attribute: reported or suppressed
        for attr, res in p["subgroups"].items():
            assert len(res["suppressed"]) + len(res["groups"]) >= 1
            assert sum(g["n"] for g in res["groups"]) + sum(s["n"] for s in res["suppressed"]) <= \
                p["performance"]["labelled"]
            for s in res["suppressed"]:  # named, with why, as in the validation report
                assert s["attribute"] == attr and s["group"] and s["label"] and s["reason"]
                assert s["n"] < 50 if "fewer than 50 stays" in s["reason"] else "positives or negatives" in \
                    s["reason"] or "fewer than 10" in s["reason"]
    reported = [g for p in evaluated for res in p["subgroups"].values() for g in res["groups"]]
    assert reported and all(g["n"] >= 50 and g["metrics"]["auroc"]["estimate"] is not None for g in reported)
    assert r["tests"]["by_kind"]["performance"] >= 6 and r["tests"]["by_kind"]["calibration"] >= 3
    before = [a for p in r["periods"] if p["end"] <= drift_site["onset"].isoformat() for a in p["alerts"]]
    assert before == []
    html = render_html(r)
    for fig in ("psi-heatmap", "output", "performance", "calibration", "subgroups"):
        assert f'data-figure="{fig}"' in html, fig
    suppressed = [s for p in evaluated for res in p["subgroups"].values() for s in res["suppressed"]]
    assert suppressed and 'id="suppressed-table"' in html
    table = html[html.index('id="suppressed-table"'):]
    for s in suppressed:
        assert f"<td>{s['attribute']}</td><td>{s['label']}</td>" in table


def test_start_and_end_inside_a_period_report_only_their_stays(drift_site: dict) -> None:
    """--start 2023-02-15 --end 2023-03-15 by quarter: the stays discharged in those four weeks, not 2023-Q1's."""
    from tests.monitor.test_burden import _cohort

    r = monitor(drift_site["bundle"], drift_site["store"], period="quarter", start="2023-02-15",
                end="2023-03-15").to_dict()
    (p,) = r["periods"]
    t = _cohort(drift_site).column("index_time").to_pylist()
    by_hand = sum(utc("2023-02-15") <= x < utc("2023-03-15") for x in t)
    assert by_hand < sum(utc("2023-01-01") <= x < utc("2023-04-01") for x in t)
    assert p["stays"] == by_hand and (p["start"], p["end"]) == ("2023-02-15", "2023-03-15")
    assert p["partial"] and (p["period_start"], p["period_end"]) == ("2023-01-01", "2023-04-01")
    assert p["label"] == "2023-Q1 (from 2023-02-15 to 2023-03-14)"
    assert "<td>2023-Q1 (from 2023-02-15 to 2023-03-14)" in render_html(r)


def test_monthly_periods_too_small_to_test_are_reported_not_alarmed(drift_site: dict) -> None:
    r = monitor(drift_site["bundle"], drift_site["store"], period="month", start="2022-07-01",
                end="2022-10-01").to_dict()
    assert [p["start"] for p in r["periods"]] == ["2022-07-01", "2022-08-01", "2022-09-01"]
    assert all(not p["tested"] and p["stays"] < 100 and p["alerts"] == [] for p in r["periods"])
    assert all(p["input_drift"][0]["psi"] is not None for p in r["periods"])  # still shown
    html = render_html(r)
    assert "No alerts" in html and html.count("too few stays") >= 3 and 'data-figure="psi-heatmap"' in html


def test_bad_inputs_stop_with_one_line(drift_site: dict, tmp_path: Path) -> None:
    b, s = drift_site["bundle"], drift_site["store"]
    with pytest.raises(CareloopError, match="--period"):
        run_monitor(b, s, tmp_path, "fortnight", None, None)
    with pytest.raises(CareloopError, match="not an event store"):
        run_monitor(b, tmp_path / "nowhere", tmp_path, "month", None, None)
    with pytest.raises(CareloopError, match="no state database"):
        run_monitor(b, s, tmp_path, "month", None, str(tmp_path / "state.db"))
    with pytest.raises(CareloopError, match="must come after"):
        monitor(b, s, start="2023-01-01", end="2022-01-01")
    with pytest.raises(CareloopError, match="not a model bundle"):
        run_monitor(tmp_path, s, tmp_path, "month", None, None)
    bad = tmp_path / "m.yaml"
    bad.write_text("psi: {watch: 0.5, act: 0.1}\n")
    with pytest.raises(CareloopError, match=r"m\.yaml:1"):
        run_monitor(b, s, tmp_path, "month", bad, None)
    assert not (tmp_path / "monitor.json").exists()  # nothing written before the inputs are known good
    (tmp_path / "afile").write_text("not a directory")
    with pytest.raises(CareloopError, match=r"--out: .*afile is a file, not a directory"):
        run_monitor(b, s, tmp_path / "afile", "month", None, None)
    from typer.testing import CliRunner

    from careloop.cli import app

    res = CliRunner().invoke(app, ["monitor", "--model", str(b), "--store", str(s), "--out", str(tmp_path / "afile")])
    assert res.exit_code == 2 and (res.exception is None or isinstance(res.exception, SystemExit))  # no traceback
    assert [line for line in res.output.splitlines() if line.strip()] == [
        f"error: --out: {tmp_path / 'afile'} is a file, not a directory"]
    assert issubclass(MonitorError, CareloopError)
