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
