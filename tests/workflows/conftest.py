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
def trained(trained_bundle) -> Path:
    """`careloop train --task readmission-30d --store ...`: the bundle's path (the command's last line)."""
    return trained_bundle
