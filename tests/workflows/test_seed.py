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


def test_the_same_data_and_seed_give_the_same_bundle_at_a_fixed_release_time(tmp_path, monkeypatch):
    """Reproducible builds: with SOURCE_DATE_EPOCH (the release time the report, the card and the manifest say)
    the same data, code and seeds give byte-identical files, so the same bundle id, and training again registers
    nothing new; the timings, which differ on every run, are in the manifest, outside the id."""
    stays = tmp_path / "stays.csv"
    rng = np.random.default_rng(1)
    with stays.open("w", newline="") as f:  # 300 patients, 2 stays each, a risk rising with age and a lab value
        w = csv.writer(f)
        w.writerow(["pid", "age", "sodium", "readmit"])
        for i in range(300):
            for _ in range(2):
                age, sodium = rng.uniform(40, 90), rng.normal(138, 4)
                risk = 1 / (1 + np.exp(-(-4 + 0.04 * age + 0.15 * (138 - sodium))))
                w.writerow([f"P{i:03d}", round(age, 1), round(sodium, 1), int(rng.random() < risk)])
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1767225600")  # 2026-01-01T00:00:00Z
    args = ("train", "--table", stays, "--label", "readmit", "--positive", "1", "--id", "pid", "--seed", 7,
            "--estimator", "lightgbm", "--n-boot", 100, "--documentation", DOC)
    first = run_cli(*args, "--registry", tmp_path / "reg")
    second = run_cli(*args, "--registry", tmp_path / "reg")
    other = run_cli(*args, "--registry", tmp_path / "other")  # trained again from nothing, elsewhere
    assert first.exit_code == second.exit_code == other.exit_code == 0, first.output + second.output
    a, b, c = (Path(r.output.strip().splitlines()[-1]) for r in (first, second, other))
    assert a == b and a.name == c.name  # one bundle: the second run's content was already registered
    assert sorted(p.name for p in (tmp_path / "reg").iterdir() if not p.name.startswith(".")) == [a.name]
    for f in sorted(p for p in a.rglob("*") if p.is_file()):
        rel = f.relative_to(a)
        if rel.as_posix() != "MANIFEST.json":
            assert (c / rel).read_bytes() == f.read_bytes(), rel
    manifest = json.loads((a / "MANIFEST.json").read_text())
    assert manifest["created"] == "2026-01-01T00:00:00+00:00"
    assert json.loads((a / "report.json").read_text())["created"] == manifest["created"]
    assert set(manifest["run"]["timings_s"]) and "timings_s" not in json.loads((a / "bundle.json").read_text())
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    bad = run_cli(*args, "--registry", tmp_path / "bad")
    assert bad.exit_code == 2 and "SOURCE_DATE_EPOCH must be a whole number of seconds" in bad.output
    assert not (tmp_path / "bad").exists() or not any((tmp_path / "bad").iterdir())
