"""Ingest fixtures: stores built once per session from the shared fixtures and the synthetic hospital."""

from __future__ import annotations

from pathlib import Path

import pytest

from careloop.ingest.runner import IngestReport, ingest
from tests.conftest import SHARED

FIXTURES = SHARED / "fixtures"


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
