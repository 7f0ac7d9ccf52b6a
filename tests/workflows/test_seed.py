"""The training seed, and the split's, are read back from the bundle: a bundle says how to train it again."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from .conftest import REPO, run_cli

DOC = REPO / "documentation" / "readmission-30d.yaml"


def _extract(path: Path) -> Path:
    """A small flat extract: 150 patients, two stays each, with a split column (fold) by patient."""
    rng = np.random.default_rng(0)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["pid", "age", "readmit", "fold"])
        for i in range(150):
            for _ in range(2):
                w.writerow([f"P{i:03d}", int(rng.integers(40, 90)), int(rng.random() < 0.3),
                            ("train", "train", "train", "calibration", "test")[i % 5]])
    return path


@pytest.mark.parametrize("split_args, split", [
    ([], {"from": "seed", "by": "patient", "seed": 7}),
    (["--split-column", "fold"], {"from": "column", "column": "fold", "seed": None}),
])
def test_seed_read_back_from_a_table_bundle(tmp_path, split_args, split):
    res = run_cli("train", "--table", _extract(tmp_path / "stays.csv"), "--label", "readmit", "--positive", "1",
                  "--id", "pid", *split_args, "--seed", 7, "--estimator", "logistic", "--n-boot", 100,
                  "--documentation", DOC, "--registry", tmp_path / "reg")
    assert res.exit_code == 0, res.output
    bundle = Path(res.output.strip().splitlines()[-1])
    meta = json.loads((bundle / "bundle.json").read_text())
    assert meta["seed"] == 7 and meta["split_seed"] == split["seed"] and meta["source"]["split"] == split
    report = json.loads((bundle / "report.json").read_text())
    assert report["model"]["seed"] == 7 and report["data"]["split"] == split
