"""Bad configuration stops with one clear line, before any work, leaving no output."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from typer.testing import CliRunner

from careloop.cli import app
from careloop.errors import ConfigError
from careloop.synth import make_config

runner = CliRunner()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--patients", "-5"], "--patients: Input should be greater than or equal to 1"),
        (["--patients", "0"], "--patients: Input should be greater than or equal to 1"),
        (["--workers", "0"], "--workers: Input should be greater than or equal to 1"),
        (["--seed", "-1"], "--seed: Input should be greater than or equal to 0"),
        (["--scenario", "flood"], "unknown scenario 'flood' (choose from: drift, bias)"),
        (["--start", "2024-01-01", "--end", "2023-01-01"], "end date 2023-01-01 must be after start date 2024-01-01"),
        (["--start", "2024-01-01", "--end", "2024-01-01"], "must be after start date"),
        (["--start", "2024-13-01"], "--start: '2024-13-01' is not a date"),
        (["--drift", "--drift-date", "2030-01-01"], "drift date 2030-01-01 must lie inside the window"),
        (["--bias", "--bias-group", "race:martian"], "unknown bias group 'race:martian'"),
        (["--bundle-format", "xml"], "--bundle-format: Input should be 'json' or 'json.gz'"),
        (["--drift-date", "2022-01-01"], "--drift-date needs --drift"),
        (["--bias-group", "language:es"], "--bias-group needs --bias"),
        (["--drift", "--bias-group", "language:es"], "--bias-group needs --bias"),
    ],
)
def test_bad_configuration_is_one_clear_line_and_writes_nothing(tmp_path: Path, args: list[str], message: str):
    out = tmp_path / "h"
    result = runner.invoke(app, ["synth", "--out", str(out), *args])
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1, result.output
    assert message in lines[0]
    assert "Traceback" not in result.output
    assert not out.exists()


def test_unwritable_output_directory_is_refused_before_work(tmp_path: Path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    result = runner.invoke(app, ["synth", "--out", str(afile / "h")])
    assert result.exit_code == 2
    assert "is not a directory" in result.output
    result = runner.invoke(app, ["synth", "--out", "/proc/careloop-cannot-write-here"])
    assert result.exit_code == 2
    assert "is not writable" in result.output


def test_drift_date_and_bias_group_go_with_their_scenario_however_it_is_named(tmp_path: Path):
    cfg = make_config(out=tmp_path / "h", scenarios=("drift", "bias"), drift_date=dt.date(2022, 1, 1),
                      bias_group="language:es")
    assert cfg.effective_drift_date == dt.date(2022, 1, 1) and cfg.bias_group == "language:es"
    with pytest.raises(ConfigError, match="--drift-date needs --drift"):
        make_config(out=tmp_path / "h", scenarios=("bias",), drift_date=dt.date(2022, 1, 1))


def test_existing_hospital_is_not_clobbered_without_overwrite(tmp_path: Path):
    out = tmp_path / "h"
    (out / "ndjson").mkdir(parents=True)
    with pytest.raises(ConfigError, match="pass --overwrite"):
        make_config(out=out)
    assert make_config(out=out, overwrite=True).overwrite


def test_interrupted_run_leaves_no_partial_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from careloop.synth import writer

    calls = {"n": 0}
    real = writer.run_shard

    def dying_shard(index: int):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(index)

    monkeypatch.setattr(writer, "run_shard", dying_shard)
    out = tmp_path / "h"
    with pytest.raises(KeyboardInterrupt):
        writer.generate(make_config(out=out, patients=30, shard_size=10))
    assert sorted(p.name for p in out.iterdir()) == []
