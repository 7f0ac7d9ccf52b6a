"""Feature sets as declarative YAML: each feature has a name, a clinical description, a window relative to the
index time and an aggregation. A feature set compiles to SQL for either engine (`engine.py`).
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from careloop.errors import CareloopError
from careloop.specfile import find_spec, parse_spec, read_spec
from careloop.tasks.spec import ENCOUNTER_CLASSES, parse_duration

_NAME = r"^[a-z][a-z0-9_]*$"
# Codes as the events carry them: VOCABULARY/code ("LOINC/2160-0", "ICD10CM/I50.9", "DISCHARGE/home"). A prefix may
# stop anywhere ("ICD10CM/I50", "LOINC/", "ICD" for every ICD vocabulary). No quotes or backslashes: they go into SQL.
_CODE = re.compile(r"^[A-Za-z0-9_.\-]+/[A-Za-z0-9_.\-/ ]+$")
_PREFIX = re.compile(r"^[A-Za-z0-9_.\-]+(/[A-Za-z0-9_.\-/ ]*)?$")
_CODE_CHARS = "letters, digits, spaces and _ . - /"
# What each kind reads (engine.py, rows.py): the fields it uses, each of them required, and in words the data it
# looks at. Any other field is refused: it would change nothing and read as if it did.
_KINDS: dict[str, tuple[tuple[str, ...], str]] = {
    "age": ((), "the birth date, at the index time"),
    "static": (("prefix",), "the whole record (every fact with its prefix)"),
    "latest_code": (("prefix", "window"), "the codes with its prefix in its window"),
    "latest_text": (("code", "window"), "the text answers to its code in its window"),
    "length_of_stay": ((), "the admission and index times of the index stay"),
    "emergent": ((), "the admission priority of the index stay"),
    "admit_source": ((), "the admit source of the index stay"),
    "principal_diagnosis": ((), "the reason code of the index stay, once it has ended"),
    "encounter_count": (("classes", "window"), "the encounters of its classes in its window before the admission"),
    "days_since_discharge": (("classes",), "the whole record (the last discharge of its classes)"),
    "distinct_codes": (("prefix", "window"), "the codes with its prefix in its window"),
    "event_count": (("source", "window"), "the events from its source in its window"),
    "comorbidity": (("index",), "the whole record (every ICD10CM/ code)"),
    "measurement": (("code", "window", "aggs"), "the values of its code in its window"),
    "score": (("score",), "the other features of the stay and the index stay itself"),
}


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

    @field_validator("window", "prefix", "code", "source", "classes", "aggs", "index", "score")
    @classmethod
    def _used(cls, v: object, info: ValidationInfo) -> object:
        kind = info.data.get("kind")
        if kind is None or v is None or v == () or info.field_name in _KINDS[kind][0]:
            return v
        raise ValueError(f"{_a(kind)} feature does not use '{info.field_name}': it reads {_KINDS[kind][1]}; "
                         f"remove '{info.field_name}'")

    @field_validator("window")
    @classmethod
    def _window(cls, v: str | None) -> str | None:
        if v is None or v in ("stay", "all"):
            return v
        d = parse_duration(v)
        if d <= dt.timedelta(0):
            raise ValueError(f"a window looks back from the index time: use a positive duration, got {v!r}")
        return v

    @field_validator("code")
    @classmethod
    def _code(cls, v: str | None) -> str | None:
        if v is not None and not _CODE.match(v):
            raise ValueError(f"{v!r} is not a code: a vocabulary and a code joined by '/' ({_CODE_CHARS}), "
                             "e.g. LOINC/2160-0")
        return v

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, v: str | None) -> str | None:
        if v is not None and not _PREFIX.match(v):
            raise ValueError(f"{v!r} is not a code prefix: a vocabulary, then optionally '/' and the start of a "
                             f"code ({_CODE_CHARS}), e.g. ICD10CM/I50 or RXNORM/")
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
        for attr in _KINDS[self.kind][0]:
            if not getattr(self, attr):
                raise ValueError(f"{_a(self.kind)} feature needs '{attr}'")
        if self.kind == "encounter_count" and self.window in ("stay", "all"):
            raise ValueError("encounter_count looks back a duration before the index admission (e.g. 180d)")
        return self

    @property
    def columns(self) -> tuple[str, ...]:
        """Output column names (a measurement gives one column per aggregation)."""
        if self.kind == "measurement":
            return tuple(f"{self.name}_{a}" for a in self.aggs)
        return (self.name,)


def _a(kind: str) -> str:
    """'a measurement', 'an age'."""
    return f"{'an' if kind[0] in 'aeiou' else 'a'} {kind}"


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

