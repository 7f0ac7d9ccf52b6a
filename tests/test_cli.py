"""Every command answers --help; the CLI reports its version; synth prints what it made."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from careloop import __version__
from careloop.cli import app

runner = CliRunner()


def _commands() -> list[str]:
    import typer.main

    group = typer.main.get_command(app)
    return sorted(group.commands)  # type: ignore[attr-defined]


@pytest.mark.parametrize("command", [None, *_commands()])
def test_every_command_has_help(command: str | None):
    args = ["--help"] if command is None else [command, "--help"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0
    assert "Usage" in result.output


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert __version__ in result.output


def test_synth_json_summary_matches_the_files(tmp_path: Path):
    out = tmp_path / "h"
    result = runner.invoke(app, ["synth", "-n", "60", "--seed", "3", "--out", str(out), "--json",
                                 "--bundle-format", "json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["patients"] == 60
    assert summary["resources"]["Patient"] == 60
    assert len([p for p in (out / "bundles").glob("*.json") if "Information" not in p.name]) == 60
    manifest = json.loads((out / "ndjson" / "manifest.json").read_text())
    assert {o["type"]: o["count"] for o in manifest["output"]} == summary["resources"]
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["resources_total"] == sum(summary["resources"].values())


def test_synth_prints_a_readable_summary(tmp_path: Path):
    result = runner.invoke(app, ["synth", "-n", "40", "--out", str(tmp_path / "h")])
    assert result.exit_code == 0, result.output
    for word in ("Patient", "Observation", "readmission", "RUH", "NCH", "LMC"):
        assert word in result.output


def test_ingest_and_store_info_speak_clearly_about_bad_input(tmp_path: Path):
    result = runner.invoke(app, ["ingest", str(tmp_path / "missing"), "--store", str(tmp_path / "s")])
    assert result.exit_code == 2
    assert "does not exist" in result.output
    result = runner.invoke(app, ["store", "info", str(tmp_path)])
    assert result.exit_code == 2
    assert "is not a careloop event store" in result.output


def test_ingest_json_then_store_info(tmp_path: Path):
    out = tmp_path / "h"
    assert runner.invoke(app, ["synth", "-n", "30", "--out", str(out)]).exit_code == 0
    result = runner.invoke(app, ["ingest", str(out / "ndjson"), "--store", str(tmp_path / "s"), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["reconciled"] and report["loaded"] == report["input"] > 0
    info = runner.invoke(app, ["store", "info", str(tmp_path / "s"), "--json"])
    data = json.loads(info.stdout)
    assert data["tables"]["patients"] == 30
    assert data["events_by_system"]["LOINC"] > 0
    assert data["quarantine_by_reason"] == {}


def test_cohort_and_features_commands_write_parquet_and_summaries(tmp_path: Path):
    import pyarrow.parquet as pq

    out = tmp_path / "h"
    assert runner.invoke(app, ["synth", "-n", "150", "--seed", "4", "--out", str(out)]).exit_code == 0
    assert runner.invoke(app, ["ingest", str(out / "ndjson"), "--store", str(tmp_path / "s")]).exit_code == 0
    res = runner.invoke(app, ["cohort", "--task", "readmission-30d", "--store", str(tmp_path / "s"), "--out",
                              str(tmp_path / "c.parquet"), "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    cohort = pq.read_table(tmp_path / "c.parquet")
    assert {"encounter_id", "patient_id", "index_time", "label", "split"} <= set(cohort.column_names)
    assert summary["stays"] == cohort.num_rows == summary["steps"][-1]["remaining"]
    res = runner.invoke(app, ["features", "--cohort", str(tmp_path / "c.parquet"), "--store", str(tmp_path / "s"),
                              "--out", str(tmp_path / "f.parquet"), "--json"])
    assert res.exit_code == 0, res.output
    feats = pq.read_table(tmp_path / "f.parquet")
    assert feats.num_rows == cohort.num_rows and "lace" in feats.column_names
    assert json.loads(res.stdout)["columns"][0]["missing_fraction"] == 0.0
    bad = runner.invoke(app, ["cohort", "--task", "no-such-task", "--store", str(tmp_path / "s"), "--out", "x"])
    assert bad.exit_code == 2 and "unknown task" in bad.output
