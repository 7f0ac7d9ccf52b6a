"""A supplied split column must keep each patient in one split; the check is compared with a plain set count."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from careloop.cli import app
from careloop.reports import Facts, model_card
from careloop.workflows._data import DataError, from_table

DOC = Path(__file__).resolve().parents[2] / "documentation" / "readmission-30d.yaml"


def _write(path: Path, rows: list[tuple[str, str]]) -> Path:
    rng = np.random.default_rng(0)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["pid", "age", "readmit", "split"])
        for pid, split in rows:
            w.writerow([pid, int(rng.integers(40, 90)), int(rng.random() < 0.3), split])
    return path


def _disjoint_rows() -> list[tuple[str, str]]:
    splits = ("train", "calibration", "test")
    return [(f"P{i:03d}", splits[i % 3]) for i in range(90) for _ in range(2)]  # two stays, one split each


def test_a_per_patient_split_column_is_accepted(tmp_path: Path) -> None:
    data = from_table(_write(tmp_path / "ok.csv", _disjoint_rows()), label="readmit", positive="1", id_col="pid",
                      split_col="split")
    ids = {s: set(data.split(s).column("patient_id").to_pylist()) for s in ("train", "calibration", "test")}
    assert all(len(v) == 30 for v in ids.values())
    assert not ids["train"] & ids["test"] and not ids["calibration"] & ids["test"]


def test_a_patient_in_two_splits_is_refused_with_a_count_and_an_example(tmp_path: Path) -> None:
    rows = _disjoint_rows()
    rows += [("P003", "test"), ("P006", "calibration"), ("P007", "train")]  # P003, P006 train; P007 calibration
    shared = {p for p, _ in rows if len({s for q, s in rows if q == p}) > 1}
    assert shared == {"P003", "P006", "P007"}
    path = _write(tmp_path / "overlap.csv", rows)
    with pytest.raises(DataError, match=r"--split-column 'split': 3 patient\(s\) are in more than one split "
                                        r"\(e\.g\. 'P003' in test and train\)"):
        from_table(path, label="readmit", positive="1", id_col="pid", split_col="split")
    res = CliRunner().invoke(app, ["train", "--table", str(path), "--label", "readmit", "--positive", "1",
                                   "--id", "pid", "--split-column", "split", "--registry", str(tmp_path / "reg"),
                                   "--documentation", str(DOC)])
    out = " ".join(res.output.split())
    assert res.exit_code == 2 and isinstance(res.exception, SystemExit)
    assert "3 patient(s) are in more than one split (e.g. 'P003' in test and train)" in out
    assert "Traceback" not in res.output and not list((tmp_path / "reg").glob("*/MANIFEST.json"))


def test_rows_outside_the_three_splits_do_not_count(tmp_path: Path) -> None:
    rows = [*_disjoint_rows(), ("P003", "")]  # a stay with no split is not in another split
    data = from_table(_write(tmp_path / "blank.csv", rows), label="readmit", positive="1", id_col="pid",
                      split_col="split")
    assert data.table.num_rows == len(rows)


def test_the_card_says_how_disjointness_is_ensured() -> None:
    card = model_card({"primary": "m", "scores": {"m": {"n": 300, "clusters": 300}}}, Facts())
    text = card["KeyMetrics"]["UsefulnessUsabilityEfficacy"]["TestingDataDescription"]
    assert "refused when the data are loaded" in text


def test_a_column_named_split_is_used_only_when_named_and_otherwise_refused_with_a_hint(tmp_path: Path) -> None:
    """A column called `split` beside careloop's own split (of --seed) would be a duplicate in the training table:
    one line saying how to use it or leave it out (it was a KeyError)."""
    path = _write(tmp_path / "named.csv", _disjoint_rows())
    with pytest.raises(DataError, match=r"column 'split' of named.csv has the name of one careloop adds to each row: "
                                        r"give --split-column split to split by it, or --exclude split"):
        from_table(path, label="readmit", positive="1", id_col="pid")
    data = from_table(path, label="readmit", positive="1", id_col="pid", exclude=["split"])
    assert "split" not in data.features and data.table.column_names.count("split") == 1
