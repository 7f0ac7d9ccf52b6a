"""One definition, two engines: DuckDB and Spark (local mode) give the same cohort and the same matrix."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from careloop.engines import DuckDBEngine, SparkEngine
from careloop.features.engine import extract
from careloop.features.spec import load_feature_set
from careloop.ingest.runner import ingest
from careloop.tasks.cohort import build_cohort
from careloop.tasks.spec import load_task
from tests.conftest import make_hospital

# A Spark session and a hospital of its own (about 30 s): with the slow runs (make test-scale, which CI runs after
# make test), keeping make test under ten minutes; the three-way tests on tiny stores keep Spark in make test
pytestmark = pytest.mark.scale


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("engines")
    hospital = make_hospital(root / "h", patients=400, seed=3)
    ingest([hospital / "bundles"], root / "store", workers=1)  # Bundles: conditional references must resolve too
    spark = SparkEngine(root / "store", master="local[2]")
    yield DuckDBEngine(root / "store"), spark
    spark.close()


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
    return a == b


@pytest.mark.parametrize("task", ["readmission-30d", "inhospital-mortality-24h"])
def test_cohorts_are_identical(engines, task: str):
    duck, spark = engines
    spec = load_task(task)
    a = build_cohort(spec, duck, dialect=duck.dialect)
    b = build_cohort(spec, spark, dialect=spark.dialect)
    assert a.steps == b.steps
    assert a.table.num_rows > 50
    for ra, rb in zip(a.table.to_pylist(), b.table.to_pylist(), strict=True):
        for k in ra:
            assert _same(ra[k], rb[k]), (k, ra["encounter_id"], ra[k], rb[k])


def test_feature_matrices_are_identical(engines):
    duck, spark = engines
    fs = load_feature_set("readmission")
    cohort = build_cohort(load_task("readmission-30d"), duck).table
    a = extract(fs, cohort, duck).table.to_pylist()
    b = extract(fs, cohort, spark).table.to_pylist()
    assert len(a) == len(b) > 50
    for ra, rb in zip(a, b, strict=True):
        for k in ra:
            assert _same(ra[k], rb[k]), (k, ra["encounter_id"], ra[k], rb[k])
    assert Path(__file__).exists()
