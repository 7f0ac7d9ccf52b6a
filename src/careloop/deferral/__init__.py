"""Clinician and AI as a team: learned deferral (CoDoC and a calibrated alternative) and team evaluation.

From three columns per case (the AI's score, the clinician's opinion, the truth), a learner finds the regions of
the score axis where the clinician decides better than the AI and defers those cases to the clinician; the AI
decides the rest. Hyperparameters are searched on a tuning set and chosen on a validation set (sensitivity at
least the clinician's, specificity above it); `team_evaluation` then compares the team with the clinician alone
and the AI alone on held-out cases, with paired cluster-bootstrap intervals (the report's `team` block).

    policy = fit_policy((tune_score, tune_clin, tune_y), (val_score, val_clin, val_y), seed=0)
    policy.predict(score, clinician).team          # the team's 0/1 decisions
    team_evaluation(policy, test_score, test_clin, test_y, clusters=patient_ids)
"""

from careloop.deferral._alternative import CalibratedDeferral
from careloop.deferral._codoc import CoDoC, advantage
from careloop.deferral._fit import LEARNERS, fit_policy
from careloop.deferral._intervals import best_intervals
from careloop.deferral._policy import SCHEMA, ClinicianRule, DeferralDecision, DeferralPolicy, ScoreTransform
from careloop.deferral._team import curve_regions, team_evaluation
from careloop.deferral._validate import DeferralError, table_columns

__all__ = [
    "LEARNERS",
    "SCHEMA",
    "CalibratedDeferral",
    "ClinicianRule",
    "CoDoC",
    "DeferralDecision",
    "DeferralError",
    "DeferralPolicy",
    "ScoreTransform",
    "advantage",
    "best_intervals",
    "curve_regions",
    "fit_policy",
    "table_columns",
    "team_evaluation",
]
