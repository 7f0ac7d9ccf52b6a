"""The inner (early-stopping / choice of C) folds of the training split: a patient's stays never straddle two
folds, however few patients there are, so no held-out fold scores a patient the model was fitted on."""

import hashlib
from collections import defaultdict

import numpy as np
import pytest

from careloop.modeling import TrainingError, inner_folds


def _stays(patients: int, seed: int = 0) -> list[str]:
    """1-6 stays per patient, rows shuffled (a patient's stays are not adjacent)."""
    rng = np.random.default_rng(seed)
    pids = [f"p{i}" for i in range(patients) for _ in range(int(rng.integers(1, 7)))]
    return [pids[i] for i in rng.permutation(len(pids))]


def _folds_of_each_patient(pids: list[str], folds: np.ndarray) -> dict[str, set[int]]:
    out: dict[str, set[int]] = defaultdict(set)
    for p, f in zip(pids, folds, strict=True):
        out[p].add(int(f))
    return out


@pytest.mark.parametrize("patients", [2, 3, 4, 8, 300])
def test_every_patient_is_in_exactly_one_fold_and_every_fold_is_used(patients: int) -> None:
    pids = _stays(patients)
    folds = inner_folds(pids, seed=0)
    assert all(len(s) == 1 for s in _folds_of_each_patient(pids, folds).values())
    k = min(5, patients)
    assert sorted(set(folds.tolist())) == list(range(k))  # the estimators take k = max + 1 and hold out each fold


@pytest.mark.parametrize("patients", [2, 3, 8, 300])
def test_folds_are_deterministic_and_do_not_depend_on_row_order(patients: int) -> None:
    pids = _stays(patients)
    first = _folds_of_each_patient(pids, inner_folds(pids, seed=7))
    assert first == _folds_of_each_patient(pids, inner_folds(pids, seed=7))
    shuffled = list(reversed(pids))
    assert first == _folds_of_each_patient(shuffled, inner_folds(shuffled, seed=7))


def _hash(pid: str, seed: int) -> int:
    return int.from_bytes(hashlib.blake2b(f"inner:{seed}:{pid}".encode(), digest_size=8).digest(), "big")


def test_many_patients_keep_their_hashed_folds() -> None:
    pids = _stays(300)
    folds = inner_folds(pids, seed=3)
    assert folds.tolist() == [_hash(p, 3) % 5 for p in pids]


def test_few_patients_are_dealt_out_in_hash_order() -> None:
    pids = [f"p{i}" for i in range(3) for _ in range(4)]  # 3 patients cannot fill 5 hashed folds
    order = sorted({*pids}, key=lambda p: _hash(p, 0))
    assert inner_folds(pids, seed=0).tolist() == [order.index(p) for p in pids]


@pytest.mark.parametrize("pids", [[], ["p1"], ["p1", "p1", "p1"]])
def test_fewer_than_two_patients_are_refused(pids: list[str]) -> None:
    with pytest.raises(TrainingError, match="at least 2 patients"):
        inner_folds(pids, seed=0)
