"""Team evaluation against counts worked out by hand on a small table, and the shape of the `team` block."""

from __future__ import annotations

import numpy as np
import pytest

from careloop.deferral import DeferralError, DeferralPolicy, curve_regions, team_evaluation

# (score, clinician, truth); the policy defers 0.3 <= s < 0.6, the AI flags s >= 0.5 in the team, and the AI alone
# flags s >= 0.4. Worked out by hand, case by case:
#   s     c y | deferred team | clinician | AI alone
#   0.10  0 0 | no    0  TN   | TN        | TN
#   0.20  1 0 | no    0  TN   | FP        | TN
#   0.25  0 1 | no    0  FN   | FN        | FN
#   0.35  1 1 | yes   1  TP   | TP        | FN
#   0.45  0 0 | yes   0  TN   | TN        | FP
#   0.50  1 0 | yes   1  FP   | FP        | FP
#   0.55  0 1 | yes   0  FN   | FN        | TP
#   0.60  0 1 | no    1  TP   | FN        | TP
#   0.70  1 0 | no    1  FP   | FP        | FP
#   0.80  0 0 | no    1  FP   | TN        | FP
#   0.90  1 1 | no    1  TP   | TP        | TP
#   1.00  0 1 | no    1  TP   | FN        | TP
TABLE = np.array([[0.10, 0, 0], [0.20, 1, 0], [0.25, 0, 1], [0.35, 1, 1], [0.45, 0, 0], [0.50, 1, 0],
                  [0.55, 0, 1], [0.60, 0, 1], [0.70, 1, 0], [0.80, 0, 0], [0.90, 1, 1], [1.00, 0, 1]])
S, C, Y = TABLE[:, 0], TABLE[:, 1], TABLE[:, 2]
BY_HAND = {  # tp, fp, fn, tn
    "team": (4, 3, 2, 3),
    "clinician_alone": (2, 3, 4, 3),
    "ai_alone": (4, 4, 2, 2),
}


def hand_policy(**kw) -> DeferralPolicy:
    return DeferralPolicy(**({"learner": "codoc", "theta": 0.5, "intervals": ((0.3, 0.6),), "ai_threshold": 0.4}
                             | kw))


def test_counts_and_rates_match_the_hand_computation():
    ev = team_evaluation(hand_policy(), S, C, Y, n_boot=0)
    for name, (tp, fp, fn, tn) in BY_HAND.items():
        block = ev if name == "team" else ev[name]
        assert (block["tp"], block["fp"], block["fn"], block["tn"]) == (tp, fp, fn, tn)
        assert block["sensitivity"]["estimate"] == pytest.approx(tp / (tp + fn))
        assert block["specificity"]["estimate"] == pytest.approx(tn / (tn + fp))
        assert block["ppv"]["estimate"] == pytest.approx(tp / (tp + fp))
        assert block["false_positives"]["estimate"] == fp
        assert block["false_negatives"]["estimate"] == fn
        assert block["sensitivity"]["ci"] is None  # n_boot = 0: no interval
    assert ev["deferral_rate"]["estimate"] == pytest.approx(4 / 12)
    assert ev["clinician_alone"]["deferral_rate"]["estimate"] == 1.0
    assert ev["ai_alone"]["deferral_rate"]["estimate"] == 0.0
    d = ev["team_minus_clinician"]
    assert d["sensitivity"]["estimate"] == pytest.approx(2 / 6)
    assert d["specificity"]["estimate"] == pytest.approx(0.0)
    assert d["false_negatives"]["estimate"] == -2
    d = ev["team_minus_ai"]
    assert d["sensitivity"]["estimate"] == pytest.approx(0.0)
    assert d["specificity"]["estimate"] == pytest.approx(1 / 6)
    assert d["false_positives"]["estimate"] == -1
    assert ev["ai_alone"]["threshold"] == 0.4 and ev["ai_alone"]["chosen_on"] == "validation"
    assert (ev["n"], ev["positives"], ev["clusters"]) == (12, 6, 12)


def test_the_ai_alone_threshold_can_only_be_overridden_explicitly():
    ev = team_evaluation(hand_policy(), S, C, Y, n_boot=0, ai_threshold=0.75)
    # AI alone flags 0.8, 0.9, 1.0: TP 2 (0.9, 1.0), FP 1 (0.8)
    assert (ev["ai_alone"]["tp"], ev["ai_alone"]["fp"]) == (2, 1)
    assert ev["ai_alone"]["chosen_on"] == "given by the caller"


def test_bootstrap_intervals_are_paired_and_clustered():
    s, c, y = np.tile(S, 20), np.tile(C, 20), np.tile(Y, 20)
    clusters = np.repeat(np.arange(60), 4)
    ev = team_evaluation(hand_policy(), s, c, y, clusters=clusters, n_boot=300, seed=3)
    assert ev["clusters"] == 60 and ev["n_boot"] == 300
    for key in ("sensitivity", "specificity", "ppv", "deferral_rate", "false_positives"):
        lo, hi = ev[key]["ci"]
        assert lo <= ev[key]["estimate"] <= hi
    # team and clinician have the same specificity on the table (3 of 6) but not on the same negatives: the paired
    # difference is 0 with an interval on both sides of it
    d = ev["team_minus_clinician"]["specificity"]
    assert d["estimate"] == pytest.approx(0.0) and d["ci"][0] < 0 < d["ci"][1]
    same = team_evaluation(hand_policy(), s, c, y, clusters=clusters, n_boot=300, seed=3)
    assert same == ev  # the same seed gives the same replicates
    everything = hand_policy(intervals=((0.0, 1.0),))
    ev = team_evaluation(everything, s, c, y, n_boot=100)
    assert ev["team_minus_clinician"]["sensitivity"] == {"estimate": 0.0, "ci": [0.0, 0.0]}


def test_workload_curve_sweeps_from_nothing_deferred_to_everything():
    adv = {"edges": [0.0, 0.25, 0.5, 0.75, 1.0], "gain": [-0.1, 0.2, 0.05, -0.3], "mass": [0.25] * 4}
    policy = hand_policy(intervals=((0.25, 0.75),), advantage=adv)
    regions = curve_regions(policy)
    assert ((0.0, 1.0),) in [r for _, r in regions] and () in [r for _, r in regions]
    assert (0.0, ((0.25, 0.75),)) in regions
    ev = team_evaluation(policy, S, C, Y, n_boot=50)
    rates = [p["deferral_rate"] for p in ev["workload_curve"]]
    assert rates == sorted(rates) and rates[0] == 0.0 and rates[-1] == 1.0
    mine = [p for p in ev["workload_curve"] if p["policy"]]
    assert len(mine) == 1 and mine[0]["specificity"]["estimate"] == ev["specificity"]["estimate"]
    clinician_point = ev["workload_curve"][-1]
    assert clinician_point["non_inferior"] is True  # the clinician alone is non-inferior to itself
    assert set(mine[0]) == {"price", "intervals", "policy", "deferral_rate", "sensitivity", "specificity",
                            "non_inferior"}


def test_block_accepts_the_policy_dict_and_summarises():
    policy = hand_policy()
    ev = team_evaluation(policy.to_dict(), S, C, Y, n_boot=20)
    assert ev["policy"]["hash"] == policy.hash
    assert "deferred" in ev["summary"] and "\n" not in ev["summary"]
    for key in ("sensitivity", "specificity", "deferral_rate"):  # the CLI contract
        assert key in ev and key in ev["clinician_alone"] and key in ev["ai_alone"]


def test_bad_evaluation_input():
    with pytest.raises(DeferralError, match="no positives"):
        team_evaluation(hand_policy(), S, C, np.zeros(12), n_boot=0)
    with pytest.raises(DeferralError, match="clusters"):
        team_evaluation(hand_policy(), S, C, Y, clusters=[1, 2], n_boot=0)
    with pytest.raises(DeferralError, match="n_boot"):
        team_evaluation(hand_policy(), S, C, Y, n_boot=-1)
    with pytest.raises(DeferralError, match="not a deferral policy"):
        team_evaluation({"schema": "other"}, S, C, Y)
