"""Bad input stops with a one-line DeferralError that names the problem."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from careloop.deferral import CoDoC, DeferralError, DeferralPolicy, fit_policy
from careloop.errors import CareloopError

rng = np.random.default_rng(0)
N = 200
S = rng.random(N)
Y = (rng.random(N) < S).astype(int)
C = np.where(rng.random(N) < 0.8, Y, 1 - Y)
GOOD = (S, C, Y)


def with_(i: int, value) -> tuple:
    cases = list(GOOD)
    cases[i] = value
    return tuple(cases)


BAD = [
    ("score outside [0, 1]", with_(0, S * 3), r"tuning score has \d+ values outside \[0, 1\].*score_transform"),
    ("score NaN", with_(0, np.where(np.arange(N) == 5, np.nan, S)), r"tuning score has 1 missing \(NaN\) value:"),
    ("score infinite", with_(0, np.where(np.arange(N) == 5, np.inf, S)), "tuning score has 1 infinite"),
    ("score text", with_(0, np.array(["high"] * N)), "tuning score must be a number; found non-numeric"),
    ("score missing", with_(0, None), "tuning score is missing"),
    ("score empty", (np.array([]), np.array([]), np.array([])), "tuning score is empty"),
    ("label not binary", with_(2, np.where(np.arange(N) == 3, 2, Y)), r"tuning y must be binary .* \('2'\)"),
    ("label text", with_(2, np.array(["yes"] * N)), "tuning y must be binary"),
    ("label NaN", with_(2, np.where(np.arange(N) == 3, np.nan, Y)), "tuning y has 1 missing label"),
    ("clinician outside", with_(1, C * 2.0), "tuning clinician must be 0/1 or a probability"),
    ("clinician NaN", with_(1, np.where(np.arange(N) == 1, np.nan, C)), r"tuning clinician has 1 missing \(NaN\)"),
    ("lengths", with_(1, C[:-3]), r"tuning set: score has 200, clinician has 197, y has 200 values"),
    ("two-dimensional", with_(0, S.reshape(20, 10)), "tuning score must be one-dimensional"),
    ("no positives", with_(2, np.zeros(N, int)), "tuning set has no positives"),
]


@pytest.mark.parametrize(("what", "tune", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_tuning_input(what, tune, message):
    with pytest.raises(DeferralError, match=message) as info:
        fit_policy(tune, GOOD, learners=["codoc"], theta=0.5, lam=1.0)
    assert "\n" not in str(info.value)
    assert isinstance(info.value, CareloopError)


@pytest.mark.parametrize(("labels", "message"), [
    (np.zeros(N, int), r"validation set has no positives \(all 200 labels are 0\)"),
    (np.ones(N, int), r"validation set has no negatives \(all 200 labels are 1\)"),
])
def test_validation_set_needs_both_classes(labels, message):
    with pytest.raises(DeferralError, match=message):
        CoDoC(theta=0.5, lam=1.0).fit(*GOOD, S, C, labels)


def test_missing_column_lists_the_columns():
    table = pd.DataFrame({"AI score": S, "clinician opinion": C, "truth": Y})
    with pytest.raises(DeferralError, match=r"tune table has no label column 'ground truth' \(columns: 'AI score'"):
        fit_policy(table, table, score="AI score", clinician="clinician opinion", label="ground truth")


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"score_transform": "probit"}, "score_transform must be one of None, 'logistic'"),
    ({"learners": ["magic"]}, "unknown deferral learner 'magic'"),
    ({"learners": "codoc"}, "learners must be a non-empty list"),
    ({"theta": 1.5}, r"theta must be a number in \[0, 1\]"),
    ({"lam": 0}, r"lam must be a number in \(0"),
    ({"margin": -0.1}, "margin must be"),
    ({"max_intervals": 0}, "max_intervals must be an integer"),
    ({"clinician_threshold": 2}, "clinician_threshold must be a probability"),
    ({"tolerance": "lots"}, "tolerance must be 'se'"),
])
def test_bad_options(kwargs, message):
    with pytest.raises(DeferralError, match=message):
        fit_policy(GOOD, GOOD, **kwargs)


def test_bad_learner_grids():
    with pytest.raises(DeferralError, match="bins must be an integer"):
        CoDoC(bins=[10, 2.5])
    with pytest.raises(DeferralError, match=r"bandwidth must be a number in \(0"):
        CoDoC(bandwidth=0)
    with pytest.raises(DeferralError, match="not fitted yet"):
        CoDoC().predict(S, C)


def test_scores_on_another_scale_need_a_declared_transform():
    logit = np.log(S / (1 - S))
    with pytest.raises(DeferralError, match="declare score_transform='logistic'"):
        fit_policy((logit, C, Y), (logit, C, Y))
    policy = fit_policy((logit, C, Y), (logit, C, Y), score_transform="logistic", learners=["codoc"])
    with pytest.raises(DeferralError, match=r"score has 1 missing \(NaN\) value"):
        policy.predict(np.where(np.arange(N) == 0, np.nan, logit), C)


def test_policy_application_checks():
    policy = fit_policy(GOOD, GOOD, learners=["codoc"], theta=0.5, lam=1.0)
    with pytest.raises(DeferralError, match="score has 1 value outside"):
        policy.predict(np.array([1.2]), np.array([1]))
    with pytest.raises(DeferralError, match="score has 2 values but clinician has 1"):
        policy.predict(np.array([0.2, 0.3]), np.array([1]))
    with pytest.raises(DeferralError, match="not valid JSON"):
        DeferralPolicy.from_json("{")
    broken = policy.to_dict()
    del broken["theta"]
    with pytest.raises(DeferralError, match="incomplete or malformed"):
        DeferralPolicy.from_dict(broken)
    with pytest.raises(DeferralError, match=r"deferral interval \[0.7, 0.2\)"):
        DeferralPolicy(learner="codoc", theta=0.5, intervals=((0.7, 0.2),), ai_threshold=0.5)
