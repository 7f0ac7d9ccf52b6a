"""`careloop deferral fit|evaluate` and `careloop evaluate` from the command line, columns with spaces."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from careloop.cli import app


def _cases(path, n, seed, *, clinician_band=True):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.2).astype(int)
    score = np.clip(np.where(y == 1, rng.beta(4, 3, n), rng.beta(2, 4, n)), 0, 1)
    band = (score > 0.3) & (score < 0.6)
    clin = np.where(band & clinician_band, y, (rng.random(n) < 0.15).astype(int))
    other = np.clip(score + rng.normal(0, 0.15, n), 0, 1)
    pq.write_table(pa.table({"AI score": score, "clinician opinion": clin, "truth": y, "Product B": other,
                             "patient": [f"p{i // 2}" for i in range(n)]}), path)
    return path


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cases")
    return {k: _cases(d / f"{k}.parquet", 3000, s) for k, s in (("tune", 1), ("val", 2), ("test", 3))}, d


def test_fit_then_evaluate_contract(files):
    f, d = files
    common = ["--score", "AI score", "--clinician", "clinician opinion", "--label", "truth"]
    res = run("deferral", "fit", "--tune", f["tune"], "--val", f["val"], *common, "--out", d / "policy.json")
    assert res.exit_code == 0, res.output
    res = run("deferral", "evaluate", "--policy", d / "policy.json", "--table", f["test"], *common, "--json",
              "--n-boot", 200)
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    for k in ("sensitivity", "specificity", "deferral_rate"):
        assert isinstance(doc[k], float)
        assert isinstance(doc["clinician_alone"][k], float) and isinstance(doc["ai_alone"][k], float)
    assert 0 < doc["deferral_rate"] < 1  # the band where the clinician is right is deferred
    assert doc["specificity"] > doc["clinician_alone"]["specificity"]


@pytest.mark.parametrize("args, message", [
    (["--score", "nope", "--clinician", "clinician opinion", "--label", "truth"], "no score column 'nope'"),
    (["--score", "AI score", "--clinician", "clinician opinion", "--label", "patient"], "binary"),
])
def test_bad_input_is_one_line(files, args, message):
    f, d = files
    res = run("deferral", "fit", "--tune", f["tune"], "--val", f["val"], *args, "--out", d / "x.json")
    assert res.exit_code == 2 and message in res.output and "Traceback" not in res.output


def test_evaluate_any_scores_side_by_side(files, tmp_path):
    f, _ = files
    res = run("evaluate", "--table", f["test"], "--score", "AI score", "--score", "Product B", "--label",
              "truth", "--id", "patient", "--out", tmp_path / "rep", "--n-boot", 200)
    assert res.exit_code == 0, res.output
    rep = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert rep["kind"] == "scores" and set(rep["scores"]) == {"AI score", "Product B"}
    assert rep["comparisons"][0]["reference"] == "Product B"
    assert (tmp_path / "rep" / "report.html").is_file()


def test_evaluate_refuses_scores_outside_0_1(tmp_path):
    pq.write_table(pa.table({"s": [0.1, 2.0, 0.3, 0.9], "y": [0, 1, 0, 1]}), tmp_path / "t.parquet")
    res = run("evaluate", "--table", tmp_path / "t.parquet", "--score", "s", "--label", "y", "--out", tmp_path / "o")
    assert res.exit_code == 2 and "not probabilities" in res.output
