"""The same seed gives byte-identical output whatever the number of workers."""

from __future__ import annotations

import hashlib
from pathlib import Path

from tests.conftest import make_hospital


def _digest_tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_is_byte_identical_with_one_and_two_workers(tmp_path: Path):
    one = make_hospital(tmp_path / "one", patients=240, seed=5, workers=1, shard_size=40)
    two = make_hospital(tmp_path / "two", patients=240, seed=5, workers=2, shard_size=40)
    a, b = _digest_tree(one), _digest_tree(two)
    assert len(a) > 240  # every bundle, every ndjson file, the truth
    assert a == b


def test_a_patient_does_not_depend_on_population_size(tmp_path: Path):
    small = make_hospital(tmp_path / "small", patients=50, seed=5, shard_size=50)
    large = make_hospital(tmp_path / "large", patients=120, seed=5, shard_size=7)
    small_bundles = _digest_tree(small / "bundles")
    large_bundles = _digest_tree(large / "bundles")
    assert small_bundles.items() <= large_bundles.items()


def test_another_seed_gives_another_hospital(tmp_path: Path):
    a = make_hospital(tmp_path / "a", patients=40, seed=1)
    b = make_hospital(tmp_path / "b", patients=40, seed=2)
    assert _digest_tree(a / "ndjson") != _digest_tree(b / "ndjson")
