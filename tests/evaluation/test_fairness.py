"""Subgroup metrics, paired gaps and flags."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fairlearn.metrics import MetricFrame
from sklearn.metrics import roc_auc_score

from careloop.evaluation import FAIRNESS_METRICS, FairnessReport, fairness
from careloop.evaluation._fairness import metric_callables, replicate_metrics
from careloop.evaluation._metrics import Cells


def population(n: int = 6000, seed: int = 0, under: str | None = None, shift: float = 0.9
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(y, p, race, patient): a calibrated model, except that group `under` has its true odds raised by e^shift.

    The groups are 60 / 25 / 15 %: a miscalibrated group also moves the overall figure it is compared with.
    """
    rng = np.random.default_rng(seed)
    race = rng.choice(["White", "Black or African American", "Asian"], n, p=[0.6, 0.25, 0.15])
    p = 1 / (1 + np.exp(-rng.normal(-1.4, 0.9, n)))
    logit = np.log(p / (1 - p)) + np.where(race == under, shift, 0.0)
    y = rng.random(n) < 1 / (1 + np.exp(-logit))
    return y, p, race, np.arange(n) // 2


def test_under_predicted_group_is_flagged_on_observed_expected() -> None:
    y, p, race, patient = population(under="Black or African American", shift=0.7)
    rep = fairness(y, p, {"race": race}, threshold=0.25, clusters=patient, n_boot=200)
    flagged = {(f.group, f.metric) for f in rep.flags}
    assert ("Black or African American", "observed_expected") in flagged
    assert ("Black or African American", "calibration_intercept") not in flagged  # reported, no default tolerance
    assert rep.to_dict()["multiplicity"]["comparisons"] == 2 * len(rep.attributes["race"].groups)
    assert 0 <= next(f for f in rep.flags if f.metric == "observed_expected").p_adjusted < 0.05
    assert not any(g != "Black or African American" for g, m in flagged if m == "observed_expected")
    flag = next(f for f in rep.flags if f.metric == "observed_expected")
    group = next(g for g in rep.attributes["race"].groups if g.group == "Black or African American")
    oe = group.metrics["observed_expected"]
    assert flag.message.startswith(f"race = Black or African American: observed/expected {oe.estimate:.2f} (95% CI ")
    assert flag.message.endswith("overall: the model under-predicts risk for this group.")
    assert flag.gap.estimate > 0.15 and flag.gap.ci[0] > 0 and flag.tolerance == 0.15
    assert "observed_expected" in group.flags


def test_well_calibrated_groups_of_equal_behaviour_raise_no_flags() -> None:
    y, p, race, patient = population(seed=1)
    sex = np.random.default_rng(2).choice(["F", "M"], y.size)
    rep = fairness(y, p, {"race": race, "sex": sex}, threshold=0.25, clusters=patient, n_boot=200)
    assert rep.flags == ()
    assert [g.group for g in rep.attributes["race"].groups] == ["White", "Black or African American", "Asian"]
    assert all(not g.flags for a in rep.attributes.values() for g in a.groups)


def test_point_values_are_metricframes_and_equal_the_bootstrap_point_values() -> None:
    y, p, race, _ = population(n=3000, seed=3, under="Asian")
    rep = fairness(y, p, {"race": race}, threshold=0.3, n_boot=0)
    frame = MetricFrame(metrics=metric_callables(0.3), y_true=y.astype(int), y_pred=p, sensitive_features=race)
    for group in rep.attributes["race"].groups:
        mask = race == group.group
        cells = Cells.build(y[mask], p[mask], np.arange(mask.sum()))
        vectorised = replicate_metrics(cells, cells.unit_weights(), 0.3)[0]
        for k, metric in enumerate(FAIRNESS_METRICS):
            value = group.metrics[metric].estimate
            assert value == frame.by_group.loc[group.group, metric]
            assert value == pytest.approx(vectorised[k], abs=1e-10), metric
        assert group.metrics["auroc"].estimate == pytest.approx(roc_auc_score(y[mask], p[mask]))
        assert group.metrics["tpr"].estimate == pytest.approx((p[mask & y] >= 0.3).mean())
        assert group.gaps["auroc"].estimate == pytest.approx(group.metrics["auroc"].estimate - frame.overall["auroc"])
        assert group.gaps["observed_expected"].estimate == pytest.approx(
            np.log(group.metrics["observed_expected"].estimate / frame.overall["observed_expected"]))


def test_gaps_are_paired() -> None:
    """A group that is the whole population differs from it by exactly 0 in every replicate."""
    y, p, _, patient = population(n=1000, seed=4)
    rep = fairness(y, p, {"site": ["A"] * y.size}, threshold=0.3, clusters=patient, n_boot=50)
    (group,) = rep.attributes["site"].groups
    for metric in FAIRNESS_METRICS:
        assert group.gaps[metric].to_dict() == {"estimate": 0.0, "ci": [0.0, 0.0]}
    assert group.metrics["auroc"].ci[0] < group.metrics["auroc"].ci[1]


def test_group_interval_equals_a_naive_loop() -> None:
    y, p, race, patient = population(n=600, seed=5)
    rep = fairness(y, p, {"race": race}, threshold=0.3, clusters=patient, n_boot=60, seed=9, min_group_size=10)
    ids, codes = np.unique(patient, return_inverse=True)
    rng = np.random.default_rng(9)
    white, auc, gap = race == "White", [], []
    for _ in range(60):
        counts = np.bincount(rng.integers(0, ids.size, ids.size), minlength=ids.size)
        idx = np.repeat(np.arange(y.size), counts[codes])
        g = idx[white[idx]]
        auc.append(roc_auc_score(y[g], p[g]))
        gap.append(auc[-1] - roc_auc_score(y[idx], p[idx]))
    group = next(g for g in rep.attributes["race"].groups if g.group == "White")
    assert group.metrics["auroc"].ci == pytest.approx(tuple(np.percentile(auc, [2.5, 97.5])), abs=1e-12)
    assert group.gaps["auroc"].ci == pytest.approx(tuple(np.percentile(gap, [2.5, 97.5])), abs=1e-12)


def test_small_and_one_class_groups_are_suppressed_and_missing_is_unknown() -> None:
    y, p, race, _ = population(n=2000, seed=6)
    race = race.astype(object)
    race[:30] = "Pacific Islander"  # 30 < 50 stays
    neg = np.flatnonzero(~y)[30:110]
    race[neg] = "Other"  # 80 stays, all negative
    race[np.flatnonzero(y)[-5:]] = None
    rep = fairness(y, p, {"race": race}, threshold=0.3, n_boot=20, labels={("race", "Other"): "Other race"})
    suppressed = {s.group: s for s in rep.attributes["race"].suppressed}
    assert suppressed["Other"].to_dict()["label"] == "Other race"
    assert suppressed["Pacific Islander"].n == 30
    assert "fewer than 50 stays" in suppressed["Pacific Islander"].reason
    assert suppressed["Other"].reason == "fewer than 10 positives"
    assert suppressed["unknown"].n == 5
    reported = {g.group for g in rep.attributes["race"].groups}
    assert reported.isdisjoint(suppressed) and "White" in reported


def test_labels_tolerances_and_the_error_rate_measures() -> None:
    y, p, race, _ = population(n=4000, seed=7)
    p = np.where(race == "Asian", p / 2, p)  # Asian patients' risk halved: fewer of their positives are flagged
    rep = fairness(y, p, {"race": race}, threshold=0.3, n_boot=100,
                   tolerances={"tpr": 0.05, "observed_expected": None}, labels={("race", "Asian"): "Asian (any)"})
    assert rep.tolerances == {"auroc": 0.10, "tpr": 0.05}
    metrics = {(f.group, f.metric) for f in rep.flags}
    assert ("Asian", "tpr") in metrics and ("Asian", "observed_expected") not in metrics
    asian = next(g for g in rep.attributes["race"].groups if g.group == "Asian")
    assert asian.label == "Asian (any)"
    msg = next(f.message for f in rep.flags if f.metric == "tpr" and f.group == "Asian")
    assert msg.startswith("race = Asian (any): sensitivity ") and "fewer of this group's positives are flagged" in msg
    default = fairness(y, p, {"race": race}, threshold=0.3, n_boot=100)
    assert not any(f.metric in ("tpr", "fpr", "ppv", "flag_rate") for f in default.flags)


def test_to_dict_shape_json_and_round_trip() -> None:
    y, p, race, patient = population(n=2000, seed=8, under="Asian")
    race = race.astype(object)
    race[:20] = None
    rep = fairness(y, p, {"race": race}, threshold=0.3, clusters=patient, n_boot=50)
    d = json.loads(json.dumps(rep.to_dict(), allow_nan=False))
    assert list(d) == ["threshold", "min_group_size", "tolerances", "multiplicity", "attributes", "flags"]
    assert set(d["attributes"]["race"]) == {"groups", "suppressed"}
    group = d["attributes"]["race"]["groups"][0]
    assert list(group) == ["group", "label", "n", "positives", "metrics", "gaps", "flags"]
    assert list(group["metrics"]) == list(FAIRNESS_METRICS) == list(group["gaps"])
    assert set(group["metrics"]["auroc"]) == {"estimate", "ci"}
    (unknown,) = d["attributes"]["race"]["suppressed"]
    assert list(unknown) == ["group", "label", "n", "reason"]
    assert unknown["group"] == unknown["label"] == "unknown" and unknown["n"] == 20
    assert unknown["reason"].startswith("fewer than 50 stays")
    assert set(d["flags"][0]) == {"attribute", "group", "metric", "gap", "tolerance", "p_adjusted", "message"}
    assert FairnessReport.from_dict(d) == rep


def test_many_calibrated_groups_raise_no_flag_by_chance() -> None:
    """40 groups x 2 measures on a calibrated model: without the Bonferroni correction a few would be flagged."""
    rng = np.random.default_rng(11)
    n = 20000
    p = 1 / (1 + np.exp(-rng.normal(-1.6, 1.0, n)))
    y = rng.random(n) < p
    groups = {f"attr{a}": rng.choice([f"g{i}" for i in range(8)], n) for a in range(5)}
    rep = fairness(y, p, groups, threshold=0.3, n_boot=200, tolerances={"observed_expected": 0.0, "auroc": 0.0})
    assert rep.comparisons == 80
    assert rep.flags == ()
    naive = sum(g.gaps[m].excludes(0.0) for a in rep.attributes.values() for g in a.groups
                for m in ("observed_expected", "auroc"))
    assert naive >= 1  # the uncorrected 95% intervals do miss zero somewhere: the correction matters
