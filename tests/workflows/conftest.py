"""One model trained on the session's synthetic hospital (5,000 patients), shared by the workflow tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from careloop.cli import app

REPO = Path(__file__).resolve().parents[2]
N_BOOT = 200


def run_cli(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="session")
def trained(hospital_store, tmp_path_factory) -> Path:
    """`careloop train --task readmission-30d --store ...`: the bundle's path (the command's last line)."""
    reg = tmp_path_factory.mktemp("registry")
    res = run_cli("train", "--task", "readmission-30d", "--store", hospital_store[0], "--registry", reg,
                  "--n-boot", N_BOOT)
    assert res.exit_code == 0, res.output
    path = Path(res.output.strip().splitlines()[-1])
    assert path.parent == reg and path.is_dir()
    return path
