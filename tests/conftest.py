"""Shared fixtures: synthetic hospitals are generated once per session, in a temporary directory."""

from __future__ import annotations

import gzip
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from careloop.ingest.runner import IngestReport, ingest
from careloop.synth import generate, make_config

SHARED = Path(__file__).resolve().parents[2] / "shared"  # the repo's sibling, here and in CI
FIXTURES = SHARED / "fixtures"


def make_hospital(out: Path, **kw) -> Path:
    cfg = make_config(out=out, overwrite=True, **({"patients": 300, "seed": 11} | kw))
    generate(cfg)
    return out


def read_ndjson(path: Path) -> list[dict]:
    with gzip.open(path, "rb") as f:
        return [orjson.loads(line) for line in f if line.strip()]


@pytest.fixture(scope="session")
def hospital(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default synthetic hospital (`careloop synth` defaults: 5,000 patients, seed 0), made with two workers;
    most synth, ingest, task and feature tests read it."""
    return make_hospital(tmp_path_factory.mktemp("hospital"), patients=5000, seed=0, workers=2)


@pytest.fixture(scope="session")
def resources(hospital: Path) -> Callable[[str], list[dict]]:
    cache: dict[str, list[dict]] = {}

    def load(rtype: str) -> list[dict]:
        if rtype not in cache:
            cache[rtype] = read_ndjson(hospital / "ndjson" / f"{rtype}.ndjson.gz")
        return cache[rtype]

    return load


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    return SHARED


@pytest.fixture(scope="session")
def synthea_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, IngestReport]:
    store = tmp_path_factory.mktemp("synthea-store")
    report = ingest([FIXTURES / "synthea-bulk-ndjson", FIXTURES / "synthea-r4-bundles"], store, workers=2)
    return store, report


@pytest.fixture(scope="session")
def hospital_store(hospital: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, IngestReport]:
    store = tmp_path_factory.mktemp("hospital-store")
    return store, ingest([hospital / "ndjson"], store, workers=2)


@pytest.fixture(scope="session")
def hospital_bundle_store(hospital: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, IngestReport]:
    store = tmp_path_factory.mktemp("hospital-bundle-store")
    return store, ingest([hospital / "bundles"], store, workers=2)


@pytest.fixture(scope="session")
def trained_bundle(hospital_store, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The readmission model trained on the session's hospital by `careloop train` (its last line is the path)."""
    from typer.testing import CliRunner

    from careloop.cli import app

    reg = tmp_path_factory.mktemp("registry")
    res = CliRunner().invoke(app, ["train", "--task", "readmission-30d", "--store", str(hospital_store[0]),
                                   "--registry", str(reg), "--n-boot", "200"])
    assert res.exit_code == 0, res.output
    path = Path(res.output.strip().splitlines()[-1])
    assert path.parent == reg and path.is_dir()
    return path
