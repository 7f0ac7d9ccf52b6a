"""The learned deferral policy: what the team does with a case, as a frozen object with a stable JSON form.

A policy is applied from its JSON alone: the score transform (if any), the AI's threshold theta inside the team,
the deferral intervals on the score axis and the rule that turns the clinician's opinion into a 0/1 decision.
Everything else it holds (hyperparameters, the advantage per bin, the validation figures) documents why.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.special import expit

from careloop.deferral._intervals import in_intervals
from careloop.deferral._validate import DeferralError, as_clinician, as_scores, check_transform

SCHEMA = "careloop.deferral-policy/1"
INTERVAL_RULE = "defer when lo <= score < hi (an interval ending at 1 includes 1), on the transformed score axis"


def canonical_json(obj: Any) -> str:
    """Sorted keys, no spaces, no NaN: the bytes the hash is taken of."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


@dataclass(frozen=True)
class ScoreTransform:
    """Maps raw scores onto the [0, 1] score axis: none, the logistic function (for log-odds), or a rank map.

    The rank map is the tuning scores' empirical distribution function, kept as at most 201 knots (the scores at
    quantile levels 0, 0.005, ..., 1, tied knots merged at their mean level) and interpolated linearly between
    them; scores beyond the tuning range go to 0 or 1.
    """

    name: str | None = None
    knots: tuple[tuple[float, float], ...] = ()

    @classmethod
    def fit(cls, name: str | None, raw: np.ndarray) -> ScoreTransform:
        check_transform(name)
        if name != "rank":
            return cls(name)
        levels = np.linspace(0.0, 1.0, 201)
        xs = np.quantile(raw, levels)
        ux, inverse = np.unique(xs, return_inverse=True)
        us = np.bincount(inverse, weights=levels) / np.bincount(inverse)
        if ux.size == 1:  # one value only: it sits in the middle of the axis
            us = np.array([0.5])
        return cls(name, tuple((float(x), float(u)) for x, u in zip(ux, us, strict=True)))

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        if self.name is None:
            return raw
        if self.name == "logistic":
            return expit(raw)
        xs = np.array([k[0] for k in self.knots])
        us = np.array([k[1] for k in self.knots])
        if xs.size == 1:
            return np.where(raw < xs[0], 0.0, np.where(raw > xs[0], 1.0, 0.5))
        return np.interp(raw, xs, us, left=0.0, right=1.0)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"transform": self.name}
        if self.name == "rank":
            out["knots"] = [[x, u] for x, u in self.knots]
        out["axis"] = {None: "the score itself, in [0, 1]", "logistic": "1 / (1 + exp(-score)), score in log-odds",
                       "rank": "the tuning scores' distribution function at the score (linear between knots)"}[
            self.name]
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ScoreTransform:
        name = check_transform(d.get("transform"))
        return cls(name, tuple((float(x), float(u)) for x, u in d.get("knots", [])))


@dataclass(frozen=True)
class ClinicianRule:
    """How the clinician's opinion becomes a decision: positive when opinion >= threshold.

    `kind` is "binary" when every tuning and validation opinion is 0 or 1 (the threshold, 0.5, then changes
    nothing), else "probability"; `rule` is "binary", "fixed" (a stated threshold, default 0.5) or
    "match_prevalence" (the threshold at which the clinician calls as many tuning cases positive as there are
    positives in the tuning set, i.e. the clinician's opinion calibrated in the large).
    """

    kind: str = "binary"
    rule: str = "binary"
    threshold: float = 0.5

    @classmethod
    def fit(cls, setting: float | str, tune_opinion: np.ndarray, val_opinion: np.ndarray,
            tune_y: np.ndarray) -> ClinicianRule:
        both = np.concatenate([tune_opinion, val_opinion])
        if setting != "prevalence" and not (
                isinstance(setting, int | float) and not isinstance(setting, bool) and 0 < setting <= 1):
            raise DeferralError(f"clinician_threshold must be a probability in (0, 1] or 'prevalence', got {setting!r}")
        if np.isin(both, (0.0, 1.0)).all():
            return cls("binary", "binary", 0.5)
        if setting == "prevalence":
            k = max(int(tune_y.sum()), 1)
            return cls("probability", "match_prevalence", float(np.sort(tune_opinion)[::-1][k - 1]))
        return cls("probability", "fixed", float(setting))

    def __call__(self, opinion: np.ndarray) -> np.ndarray:
        return opinion >= self.threshold

    def to_dict(self) -> dict[str, Any]:
        how = {"binary": "the opinion is 0/1 and used as it is",
               "fixed": f"a probability, read as positive when >= {self.threshold!r}",
               "match_prevalence": (f"a probability, read as positive when >= {self.threshold!r}: the threshold "
                                    "at which the clinician calls as many tuning cases positive as there are "
                                    "positives")}[self.rule]
        return {"kind": self.kind, "rule": self.rule, "threshold": self.threshold,
                "positive_when": "opinion >= threshold", "how": how}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ClinicianRule:
        return cls(str(d["kind"]), str(d["rule"]), float(d["threshold"]))


@dataclass(frozen=True)
class DeferralDecision:
    """Per case: `defer` (the clinician decides), `ai` (score >= theta), `clinician` (the opinion read as 0/1,
    None when not given) and `team` (the clinician's decision where deferred, the AI's elsewhere; None without
    the clinician's opinions)."""

    defer: np.ndarray
    ai: np.ndarray
    clinician: np.ndarray | None
    team: np.ndarray | None

    @property
    def deferral_rate(self) -> float:
        return float(self.defer.mean())


@dataclass(frozen=True, eq=False)
class DeferralPolicy:
    """A learned deferral policy. Build it with `CoDoC`, `CalibratedDeferral` or `fit_policy`; store it with
    `to_dict()` (JSON-ready, with its `hash`); load it with `from_dict`.

    `intervals` are on the transformed score axis; `ai_threshold` is the AI-alone baseline's threshold (chosen on
    the validation set: the largest one whose validation sensitivity is at least the clinician's), used by
    `team_evaluation`; `advantage` is the estimated gain of deferring per bin and the share of cases per bin, from
    which the workload curve is swept; the other fields document the fit.
    """

    learner: str
    theta: float
    intervals: tuple[tuple[float, float], ...]
    ai_threshold: float
    score: ScoreTransform = field(default_factory=ScoreTransform)
    clinician: ClinicianRule = field(default_factory=ClinicianRule)
    margin: float = 0.0
    max_intervals: int = 2
    method: str = ""
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    advantage: dict[str, list[float]] | None = None
    selection: dict[str, Any] = field(default_factory=dict)
    validation: dict[str, Any] = field(default_factory=dict)
    tuning: dict[str, Any] = field(default_factory=dict)
    seed: int = 0

    def __post_init__(self) -> None:
        for lo, hi in self.intervals:
            if not (0.0 <= lo < hi <= 1.0):
                raise DeferralError(f"deferral interval [{lo}, {hi}) must lie in [0, 1] with lo < hi")
        if not (math.isfinite(self.theta) and math.isfinite(self.ai_threshold)):
            raise DeferralError("theta and ai_threshold must be finite numbers")

    # applying the policy ---------------------------------------------------------------------------------
    def axis(self, score: Any) -> np.ndarray:
        """Raw scores -> the [0, 1] score axis the intervals and thresholds live on."""
        return self.score(as_scores(score, "score", transform=self.score.name))

    def defers(self, score: Any) -> np.ndarray:
        """True for the cases left to the clinician (needs the score only, not the clinician's opinion)."""
        return in_intervals(self.axis(score), self.intervals)

    def predict(self, score: Any, clinician: Any = None) -> DeferralDecision:
        s = self.axis(score)
        defer = in_intervals(s, self.intervals)
        ai = (s >= self.theta).astype(np.int8)
        if clinician is None:
            return DeferralDecision(defer, ai, None, None)
        c = self.clinician(as_clinician(clinician, "clinician")).astype(np.int8)
        if c.size != s.size:
            raise DeferralError(f"score has {s.size} values but clinician has {c.size}; they must describe the "
                                "same cases")
        return DeferralDecision(defer, ai, c, np.where(defer, c, ai).astype(np.int8))

    # JSON ------------------------------------------------------------------------------------------------
    def _body(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "learner": self.learner,
            "method": self.method,
            "hyperparameters": self.hyperparameters,
            "theta": self.theta,
            "intervals": [[lo, hi] for lo, hi in self.intervals],
            "interval_rule": INTERVAL_RULE,
            "max_intervals": self.max_intervals,
            "score": self.score.to_dict(),
            "clinician": self.clinician.to_dict(),
            "ai_alone": {"threshold": self.ai_threshold, "chosen_on": "validation",
                         "rule": "the largest threshold whose validation sensitivity is at least the clinician's"},
            "margin": self.margin,
            "advantage": self.advantage,
            "selection": self.selection,
            "validation": self.validation,
            "tuning": self.tuning,
            "seed": self.seed,
        }

    @property
    def hash(self) -> str:
        """sha256 of the canonical JSON of the policy (everything in `to_dict()` but the hash itself)."""
        return hashlib.sha256(canonical_json(self._body()).encode()).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        body = json.loads(canonical_json(self._body()))  # JSON types only, and a check that it is valid JSON
        body["hash"] = self.hash
        return body

    def to_json(self) -> str:
        return canonical_json(self.to_dict())

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DeferralPolicy:
        if not isinstance(d, dict) or d.get("schema") != SCHEMA:
            got = d.get("schema") if isinstance(d, dict) else type(d).__name__
            raise DeferralError(f"not a deferral policy: expected schema {SCHEMA!r}, got {got!r}")
        try:
            policy = cls(
                learner=str(d["learner"]), theta=float(d["theta"]),
                intervals=tuple((float(lo), float(hi)) for lo, hi in d["intervals"]),
                ai_threshold=float(d["ai_alone"]["threshold"]), score=ScoreTransform.from_dict(d["score"]),
                clinician=ClinicianRule.from_dict(d["clinician"]), margin=float(d.get("margin", 0.0)),
                max_intervals=int(d.get("max_intervals", 2)), method=str(d.get("method", "")),
                hyperparameters=dict(d.get("hyperparameters") or {}), advantage=d.get("advantage"),
                selection=dict(d.get("selection") or {}), validation=dict(d.get("validation") or {}),
                tuning=dict(d.get("tuning") or {}), seed=int(d.get("seed", 0)))
        except (KeyError, TypeError, ValueError) as e:
            if isinstance(e, DeferralError):
                raise
            raise DeferralError(f"deferral policy is incomplete or malformed: {type(e).__name__} {e}") from None
        if "hash" in d and d["hash"] != policy.hash:
            raise DeferralError(f"deferral policy hash mismatch: stored {d['hash'][:12]}..., content gives "
                                f"{policy.hash[:12]}... (the policy was edited after it was fitted)")
        return policy

    @classmethod
    def from_json(cls, text: str) -> DeferralPolicy:
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as e:
            raise DeferralError(f"deferral policy is not valid JSON: {e}") from None
