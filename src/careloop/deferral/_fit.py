"""`fit_policy`: search every learner on the tuning set, choose on the validation set, return one policy."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from careloop.deferral._alternative import CalibratedDeferral
from careloop.deferral._codoc import CoDoC
from careloop.deferral._policy import DeferralPolicy
from careloop.deferral._search import Learner, prepare, search
from careloop.deferral._validate import DeferralError, as_case_set

LEARNERS: dict[str, type[Learner]] = {"codoc": CoDoC, "alternative": CalibratedDeferral}


def fit_policy(tune: Any, val: Any, *, learners: Sequence[str | Learner] = ("codoc", "alternative"), seed: int = 0,
               score: str = "score", clinician: str = "clinician", label: str = "label", **options: Any
               ) -> DeferralPolicy:
    """Fit every learner on the tuning set and keep the configuration chosen on the validation set.

    `tune` and `val` are tables (pandas DataFrames or mappings; columns named by `score`, `clinician`, `label`,
    spaces allowed) or (score, clinician, y) triples. `learners` are names ("codoc", "alternative") or learner
    instances (whose own grids are then used: `CoDoC(bins=..., bandwidth=...)`, `CalibratedDeferral(knots=...)`).
    `options` are shared by all learners: theta, lam, max_intervals, margin, clinician_threshold (0.5 or
    "prevalence"), score_transform (None, "logistic", "rank"), n_boot (validation intervals). The test set is not
    an argument: it is evaluated once, afterwards, with `team_evaluation`.
    """
    if isinstance(learners, str | Learner) or not learners:
        raise DeferralError("learners must be a non-empty list of names ('codoc', 'alternative') or learners")
    chosen: list[Learner] = []
    for item in learners:
        if isinstance(item, Learner):
            chosen.append(item)
        elif item in LEARNERS:
            chosen.append(LEARNERS[item]())
        else:
            raise DeferralError(f"unknown deferral learner {item!r}: choose from {', '.join(LEARNERS)}")
    names = [learner.name for learner in chosen]
    if len(set(names)) != len(names):
        raise DeferralError(f"each learner may appear once, got {names}")
    tune_cols = as_case_set(tune, "tune", score=score, clinician=clinician, label=label)
    val_cols = as_case_set(val, "val", score=score, clinician=clinician, label=label)
    prep = prepare(tune_cols, val_cols, seed=seed, **options)
    return search(prep, chosen)
