"""Learning on generated cases where the truth is known, selection on validation, refits, and the policy's JSON."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from careloop.deferral import CalibratedDeferral, CoDoC, DeferralError, DeferralPolicy, fit_policy, team_evaluation

from .conftest import BAND, band_cases


@pytest.fixture(scope="module")
def band_policy(band) -> DeferralPolicy:
    tune, val, _ = band
    return fit_policy(tune, val, seed=0)


def band_coverage(policy: DeferralPolicy) -> tuple[float, float]:
    """Share of the band's interior deferred, and share of scores well outside the band deferred."""
    inner = np.linspace(BAND[0] + 0.04, BAND[1] - 0.04, 200)
    outer = np.concatenate([np.linspace(0, BAND[0] - 0.08, 200), np.linspace(BAND[1] + 0.08, 1, 200)])
    return float(policy.defers(inner).mean()), float(policy.defers(outer).mean())


def test_band_where_the_clinician_is_better_is_deferred_and_the_team_beats_both(band, band_policy):
    inside, outside = band_coverage(band_policy)
    assert inside >= 0.9
    assert outside <= 0.05
    *_, test = band
    ev = team_evaluation(band_policy, *test, n_boot=400, seed=1)
    # sensitivity non-inferior to both (within the interval), specificity higher than both (interval above 0)
    for ref in ("team_minus_clinician", "team_minus_ai"):
        assert ev[ref]["sensitivity"]["ci"][1] >= 0
        assert ev[ref]["specificity"]["ci"][0] > 0
    assert ev["specificity"]["estimate"] > max(ev["clinician_alone"]["specificity"]["estimate"],
                                               ev["ai_alone"]["specificity"]["estimate"])
    assert 0.2 < ev["deferral_rate"]["estimate"] < 0.45  # about the band's share of cases (0.3)


@pytest.mark.parametrize("learner", [CoDoC, CalibratedDeferral])
def test_each_learner_alone_finds_the_band(band, learner):
    tune, val, _ = band
    policy = learner().fit(*tune, *val).policy_
    assert policy.learner == learner.name
    inside, outside = band_coverage(policy)
    assert inside >= 0.9
    assert outside <= 0.1


@pytest.mark.parametrize("learners", [("codoc",), ("alternative",), ("codoc", "alternative")])
def test_a_clinician_who_is_never_better_gets_nothing_deferred(never, learners):
    tune, val, test = never
    policy = fit_policy(tune, val, learners=learners)
    assert policy.intervals == ()
    assert policy.learner == "ai_alone"
    assert not policy.predict(test[0], test[1]).defer.any()
    assert "ai_alone" in policy.selection["learners"]


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_held_out_sensitivity_is_never_worse_than_the_clinician_beyond_the_interval(seed):
    tune, val, test = (band_cases(2000, seed + k) for k in (0, 100, 200))
    policy = fit_policy(tune, val, seed=seed)
    ev = team_evaluation(policy, *test, n_boot=300, seed=seed)
    assert ev["team_minus_clinician"]["sensitivity"]["ci"][1] >= 0
    gain = ev["team_minus_clinician"]["specificity"]
    assert gain["ci"] is not None and gain["ci"][0] <= gain["estimate"] <= gain["ci"][1]
    assert gain["estimate"] > 0


def test_a_refit_gives_the_identical_policy(band):
    tune, val, _ = band
    a, b = fit_policy(tune, val, seed=5), fit_policy(tune, val, seed=5)
    assert a.to_json() == b.to_json()
    assert a.hash == b.hash == a.to_dict()["hash"]
    assert len(a.hash) == 64


def test_policy_json_round_trip_and_tamper_check(band_policy, band):
    *_, test = band
    d = json.loads(json.dumps(band_policy.to_dict()))
    again = DeferralPolicy.from_dict(d)
    assert again.hash == band_policy.hash
    assert again.to_json() == band_policy.to_json()
    np.testing.assert_array_equal(again.predict(test[0], test[1]).team, band_policy.predict(test[0], test[1]).team)
    d["intervals"] = [[0.0, 1.0]]
    with pytest.raises(DeferralError, match="hash mismatch"):
        DeferralPolicy.from_dict(d)


def test_policy_json_documents_the_choice(band_policy):
    d = band_policy.to_dict()
    assert d["schema"] == "careloop.deferral-policy/1"
    assert d["learner"] in ("codoc", "alternative")
    assert set(d["hyperparameters"]) >= {"lambda", "bins", "max_intervals"}
    assert d["ai_alone"]["chosen_on"] == "validation"
    assert d["clinician"]["kind"] == "binary"
    sel = d["selection"]
    assert sel["chosen_on"] == "validation" and sel["fallback"] is False
    assert sel["learners"]["codoc"]["candidates"] > 100 and sel["learners"]["alternative"]["candidates"] > 10
    val = d["validation"]
    assert val["team"]["sensitivity"]["estimate"] >= sel["clinician_on_validation"]["sensitivity"]
    assert val["team"]["specificity"]["estimate"] > sel["clinician_on_validation"]["specificity"]
    assert val["team_minus_clinician"]["specificity"]["ci"] is not None
    assert len(d["advantage"]["gain"]) == len(d["advantage"]["edges"]) - 1 == d["hyperparameters"]["bins"]


def test_a_clinician_nobody_beats_gets_everything_and_the_policy_says_so():
    rng = np.random.default_rng(0)

    def cases(n):
        s = rng.random(n)
        y = (rng.random(n) < s).astype(int)
        return s, y.copy(), y  # the clinician is always right

    policy = fit_policy(cases(800), cases(800))
    assert policy.learner == "clinician_alone"
    assert policy.intervals == ((0.0, 1.0),)
    assert policy.selection["fallback"] is True
    assert "deferred to the clinician" in policy.selection["reason"]
    s, c, _ = cases(500)
    decision = policy.predict(s, c)
    assert decision.defer.all() and (decision.team == c).all()


def test_a_probability_opinion_is_thresholded_as_stated(band):
    tune, val, _ = band
    rng = np.random.default_rng(4)

    def soften(cases):  # opinions as probabilities on the same side of 0.5 as the 0/1 opinion
        s, c, y = cases
        return s, np.where(c == 1, rng.uniform(0.5, 1, c.size), rng.uniform(0, 0.5, c.size)), y

    soft_tune, soft_val = soften(tune), soften(val)
    policy = fit_policy(soft_tune, soft_val, learners=["codoc"], theta=0.45, lam=1.0)
    assert policy.clinician.kind == "probability" and policy.clinician.threshold == 0.5
    binary = fit_policy(tune, val, learners=["codoc"], theta=0.45, lam=1.0)
    assert policy.intervals == binary.intervals  # the same decisions, read from probabilities
    assert "positive when >= 0.5" in policy.to_dict()["clinician"]["how"]
    matched = fit_policy(soft_tune, soft_val, learners=["codoc"], theta=0.45, lam=1.0,
                         clinician_threshold="prevalence")
    k = int(np.sum(soft_tune[2]))
    assert matched.clinician.rule == "match_prevalence"
    assert matched.clinician.threshold == np.sort(soft_tune[1])[::-1][k - 1]
    assert np.sum(soft_tune[1] >= matched.clinician.threshold) == k


def test_declared_transforms(band):
    tune, val, test = band

    def logit(cases):
        s, c, y = cases
        p = np.clip(s, 1e-9, 1 - 1e-9)
        return np.log(p / (1 - p)), c, y

    direct = fit_policy(tune, val, learners=["codoc"], theta=0.45, lam=1.0)
    via_logit = fit_policy(logit(tune), logit(val), learners=["codoc"], theta=0.45, lam=1.0,
                           score_transform="logistic")
    assert via_logit.intervals == direct.intervals
    np.testing.assert_array_equal(via_logit.defers(logit(test)[0]), direct.defers(test[0]))

    def scaled(cases):  # a product's score on its own scale, 0..500
        s, c, y = cases
        return 500 * s**2, c, y

    ranked = fit_policy(scaled(tune), scaled(val), score_transform="rank")
    assert ranked.score.name == "rank" and len(ranked.to_dict()["score"]["knots"]) <= 201
    raw_band = 500 * np.linspace(BAND[0] + 0.04, BAND[1] - 0.04, 100) ** 2
    assert ranked.defers(raw_band).mean() > 0.95
    assert ranked.defers(500 * np.linspace(0.8, 1, 50) ** 2).mean() < 0.1


def test_columns_with_spaces_and_tables(band):
    tune, val, _ = band
    names = {"score": "AI score", "clinician": "clinician opinion", "label": "ground truth"}

    def table(cases):
        return pd.DataFrame(dict(zip(names.values(), cases, strict=True)))

    a = fit_policy(table(tune), table(val), learners=["codoc"], theta=0.45, lam=1.0, **names)
    b = fit_policy(tune, val, learners=["codoc"], theta=0.45, lam=1.0)
    assert a.to_json() == b.to_json()


def test_strict_selection_takes_the_best_specificity_and_the_default_the_least_workload_among_near_ties(band):
    tune, val, _ = band
    strict = fit_policy(tune, val, tolerance=0)
    default = fit_policy(tune, val)
    sel = strict.selection
    best = max(v["best"]["specificity"] for v in sel["learners"].values() if v["best"])
    assert strict.validation["team"]["specificity"]["estimate"] == best
    assert default.selection["tolerance"] == "se" and sel["tolerance"] == 0
    assert default.validation["team"]["deferral_rate"]["estimate"] <= strict.validation["team"]["deferral_rate"][
        "estimate"]
    n_neg = strict.validation["n"] - strict.validation["positives"]
    se = (best * (1 - best) / n_neg) ** 0.5
    assert default.validation["team"]["specificity"]["estimate"] >= best - se - 1e-12
