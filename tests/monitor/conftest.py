"""A small synthetic hospital with the `drift` scenario, its event store, and a model trained before the drift.

The hospital runs from 2021-01-01 to 2023-07-01 and its creatinine assay changes on 2023-01-01 (the `drift` scenario:
values read x1.12 + 0.05 mg/dL, some diagnoses recoded). The model is trained by `careloop train` on a copy of the
readmission task split by time at 2022-07-01, so its training and calibration stays end there. Monitored by
quarter from the first quarter after its training data, 2022-Q3 and 2022-Q4 are periods without drift and 2023-Q1
is the first full period after onset.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from tests.conftest import make_hospital

from careloop.ingest.runner import ingest

ROOT = Path(__file__).resolve().parents[2]
START, END = dt.date(2020, 1, 1), dt.date(2023, 7, 1)
SPLIT, ONSET = dt.date(2022, 7, 1), dt.date(2023, 1, 1)
PATIENTS, SEED = 6500, 7


def time_split_task(folder: Path, test_from: dt.date) -> Path:
    """The repository's readmission task, split by time (stays from `test_from` on are the test split)."""
    text = (ROOT / "tasks" / "readmission-30d.yaml").read_text()
    assert "  by: patient\n" in text
    text = text.replace("  by: patient\n", f"  by: time\n  test_from: {test_from.isoformat()}\n")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "readmission-30d.yaml"
    path.write_text(text)
    return path


def train_bundle(store: Path, registry: Path, task: Path, *extra: str) -> Path:
    from typer.testing import CliRunner

    from careloop.cli import app

    res = CliRunner().invoke(app, ["train", "--task", str(task), "--store", str(store), "--registry", str(registry),
                                   "--n-boot", "100", "--estimator", "logistic", *extra])
    assert res.exit_code == 0, res.output
    return Path(res.output.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def drift_site(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """{"store", "bundle", "onset", "split"}: the drifting hospital's store and the bundle trained before it."""
    root = tmp_path_factory.mktemp("monitor-drift")
    hospital = make_hospital(root / "hospital", patients=PATIENTS, seed=SEED, workers=2, scenarios=("drift",),
                             drift_date=ONSET, start=START, end=END)
    store = root / "store"
    ingest([hospital / "ndjson"], store, workers=2)
    bundle = train_bundle(store, root / "registry", time_split_task(root / "tasks", SPLIT))
    return {"store": store, "bundle": bundle, "onset": ONSET, "split": SPLIT, "root": root}


@pytest.fixture(scope="session")
def quarterly(drift_site: dict, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict, Path]:
    """(summary, monitor.json, OUT) of `run_monitor` by quarter on the drifting hospital, with the defaults."""
    import json

    from careloop.monitor.cli import run_monitor

    out = tmp_path_factory.mktemp("monitor-out")
    summary = run_monitor(drift_site["bundle"], drift_site["store"], out, "quarter", None, None)
    return summary, json.loads((out / "monitor.json").read_text()), out


@pytest.fixture(scope="session")
def patient_split(drift_site: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The repository's readmission task as it is (split by patient), trained by `careloop train --data-end` on the
    drifting hospital's data up to 2022-07-01: its training stays are patients' stays of every year up to then, none
    after. {"bundle", "data_end"}."""
    reg = tmp_path_factory.mktemp("registry-patient-split")
    bundle = train_bundle(drift_site["store"], reg, ROOT / "tasks" / "readmission-30d.yaml", "--data-end",
                          SPLIT.isoformat())
    return {"bundle": bundle, "data_end": SPLIT}
