"""Feature sets as declarative YAML: each feature has a name, a clinical description, a window relative to the
index time and an aggregation. A feature set compiles to SQL for either engine (`engine.py`).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from careloop.errors import CareloopError
from careloop.specfile import find_spec, parse_spec, read_spec
from careloop.tasks.spec import ENCOUNTER_CLASSES, parse_duration

_NAME = r"^[a-z][a-z0-9_]*$"


class FeatureSpecError(CareloopError):
    """A feature file is invalid; the message lists every problem with its file and line."""


class Feature(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, Field(pattern=_NAME)]
    description: Annotated[str, Field(min_length=3)]
    kind: Literal["age", "static", "latest_code", "latest_text", "length_of_stay", "emergent", "admit_source",
                  "principal_diagnosis",
                  "encounter_count", "days_since_discharge", "distinct_codes", "event_count", "comorbidity",
                  "measurement", "score"]
    window: str | None = None  # "stay", "all" or a duration such as 180d; windows always end at the index time
    prefix: str | None = None
    code: str | None = None
    source: str | None = None
    classes: tuple[str, ...] = ()
    aggs: tuple[Literal["last", "first", "min", "max", "mean", "count", "trend", "hours_since"], ...] = ()
    index: Literal["charlson", "van_walraven"] | None = None
    score: Literal["lace", "hospital"] | None = None

    @field_validator("window")
    @classmethod
    def _window(cls, v: str | None) -> str | None:
        if v is None or v in ("stay", "all"):
            return v
        d = parse_duration(v)
        if d <= dt.timedelta(0):
            raise ValueError(f"a window looks back from the index time: use a positive duration, got {v!r}")
        return v

    @field_validator("classes")
    @classmethod
    def _classes(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        bad = [c for c in v if c not in ENCOUNTER_CLASSES]
        if bad:
            raise ValueError(f"unknown encounter class {bad[0]!r}")
        return v

    @model_validator(mode="after")
    def _needs(self) -> Feature:
        need = {"static": ("prefix",), "latest_code": ("prefix", "window"), "latest_text": ("code", "window"),
                "encounter_count": ("classes", "window"), "days_since_discharge": ("classes",),
                "distinct_codes": ("prefix", "window"), "event_count": ("source", "window"),
                "comorbidity": ("index",), "measurement": ("code", "window", "aggs"), "score": ("score",)}
        for attr in need.get(self.kind, ()):
            if not getattr(self, attr):
                raise ValueError(f"a {self.kind} feature needs '{attr}'")
        if self.kind == "encounter_count" and self.window in ("stay", "all"):
            raise ValueError("encounter_count looks back a duration before the index admission (e.g. 180d)")
        return self

    @property
    def columns(self) -> tuple[str, ...]:
        """Output column names (a measurement gives one column per aggregation)."""
        if self.kind == "measurement":
            return tuple(f"{self.name}_{a}" for a in self.aggs)
        return (self.name,)


class FeatureSet(BaseModel):
    """A named set of features. Load with `FeatureSet.from_yaml(path)` or `load_feature_set(name)`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")]
    description: str
    features: tuple[Feature, ...]

    @model_validator(mode="after")
    def _unique(self) -> FeatureSet:
        cols = [c for f in self.features for c in f.columns]
        dup = {c for c in cols if cols.count(c) > 1}
        if dup:
            raise ValueError(f"duplicate feature columns: {sorted(dup)}")
        return self

    @property
    def columns(self) -> list[str]:
        return [c for f in self.features for c in f.columns]

    def describe(self) -> list[dict]:
        """One row per output column: name, description, kind, window, aggregation (for reports)."""
        out = []
        for f in self.features:
            for c in f.columns:
                agg = c.removeprefix(f.name + "_") if f.kind == "measurement" else None
                out.append({"column": c, "feature": f.name, "description": f.description, "kind": f.kind,
                            "window": f.window, "aggregation": agg, "code": f.code or f.prefix})
        return out

    @classmethod
    def from_yaml(cls, path: str | Path) -> FeatureSet:
        return cls.from_text(*read_spec(path, FeatureSpecError, "feature"))

    @classmethod
    def from_text(cls, text: str, source: str = "<features>") -> FeatureSet:
        return parse_spec(cls, text, source, FeatureSpecError)


def load_feature_set(name_or_path: str | Path) -> FeatureSet:
    """A feature set by path or by name (`readmission`, looked up in $CARELOOP_FEATURES, then features/)."""
    return FeatureSet.from_yaml(find_spec(name_or_path, "CARELOOP_FEATURES", "features", FeatureSpecError,
                                          "feature set"))


def window_us(window: str | None) -> int | None:
    """Look-back of a duration window in microseconds (None for 'stay' and 'all')."""
    if window in (None, "stay", "all"):
        return None
    return int(parse_duration(window) / dt.timedelta(microseconds=1))

