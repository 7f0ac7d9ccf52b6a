"""Prediction tasks as small declarative YAML, loaded into strict models with errors that name the line.

A task says when a prediction is made (the index), who is excluded, what the label is and over which horizon,
how censoring works, and how patients are split. It compiles to one SQL query per engine (`cohort.py`).
"""

from __future__ import annotations

import datetime as dt
import difflib
import math
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from careloop.errors import CareloopError
from careloop.specfile import find_spec, parse_spec, read_spec

ENCOUNTER_CLASSES = ("IMP", "EMER", "AMB", "OBSENC", "HH", "VR", "SS", "ACUTE", "NONAC", "PRENC")
PRIORITIES = ("EL", "EM", "UR", "A", "R", "S")
EXCLUSIONS = ("died_in_stay", "transfer_out", "against_medical_advice", "hospice", "out_of_hospital_at_index")
_DURATION = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*(m|h|d|w)\s*$")
_UNIT = {"m": dt.timedelta(minutes=1), "h": dt.timedelta(hours=1), "d": dt.timedelta(days=1),
         "w": dt.timedelta(weeks=1)}
# 200 years: longer than any record, and far inside what timedelta and int64 microseconds can hold
MAX_DURATION = dt.timedelta(days=73050)


class TaskSpecError(CareloopError):
    """A task file is invalid; the message lists every problem with its file and line."""


def parse_duration(text: str | int | float) -> dt.timedelta:
    """'30d', '24h', '90m', '2w' (a bare number is days) -> timedelta; at most MAX_DURATION either way.

    >>> parse_duration("30d").days
    30
    >>> parse_duration("1000000d")
    Traceback (most recent call last):
    ValueError: '1000000d' is longer than 200 years (73050d), the longest duration a spec may give
    """
    if isinstance(text, int | float) and not isinstance(text, bool):
        number, unit = float(text), _UNIT["d"]
    else:
        m = _DURATION.match(str(text))
        if not m:
            raise ValueError(f"{text!r} is not a duration (use e.g. 30d, 24h, 90m, 2w)")
        number, unit = float(m.group(1)), _UNIT[m.group(2)]
    if not math.isfinite(number):
        raise ValueError(f"{text!r} is not a finite duration (use e.g. 30d, 24h, 90m, 2w)")
    if abs(number) * unit.total_seconds() > MAX_DURATION.total_seconds():
        raise ValueError(f"{text!r} is longer than 200 years ({MAX_DURATION.days}d), the longest duration a spec "
                         "may give")
    return number * unit


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Index(_Strict):
    event: Literal["discharge", "admission"]
    encounter_class: tuple[str, ...] = ("IMP",)
    offset: dt.timedelta = dt.timedelta(0)

    @field_validator("offset", mode="before")
    @classmethod
    def _offset(cls, v: object) -> dt.timedelta:
        d = v if isinstance(v, dt.timedelta) else parse_duration(v)  # type: ignore[arg-type]
        if d < dt.timedelta(0):
            raise ValueError("the index offset must not be negative (a prediction cannot precede its event)")
        return d

    @field_validator("encounter_class")
    @classmethod
    def _classes(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v:
            raise ValueError("no encounter class: no stay can be an index stay (the cohort would be empty)")
        return _known(v, ENCOUNTER_CLASSES, "encounter class")


class AgeUnder(_Strict):
    age_under: Annotated[float, Field(gt=0, le=130)]


class Label(_Strict):
    kind: Literal["next_admission", "death_before_discharge"]
    within: dt.timedelta | None = None
    encounter_class: tuple[str, ...] = ("IMP",)
    exclude_priority: tuple[str, ...] = ()

    @field_validator("within", mode="before")
    @classmethod
    def _within(cls, v: object) -> dt.timedelta | None:
        if v is None:
            return None
        d = v if isinstance(v, dt.timedelta) else parse_duration(v)  # type: ignore[arg-type]
        if d <= dt.timedelta(0):
            raise ValueError(f"the horizon must be positive, got {v!r}: a label inside an empty window can never "
                             "be true")
        return d

    @field_validator("encounter_class")
    @classmethod
    def _classes(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v:
            raise ValueError("no encounter class: the label can never be true")
        return _known(v, ENCOUNTER_CLASSES, "encounter class")

    @field_validator("exclude_priority")
    @classmethod
    def _priorities(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return _known(v, PRIORITIES, "priority")

    @model_validator(mode="after")
    def _horizon(self) -> Label:
        if self.kind == "next_admission" and self.within is None:
            raise ValueError("a next_admission label needs a horizon ('within: 30d')")
        if self.kind == "death_before_discharge" and self.within is not None:
            raise ValueError("death_before_discharge has no horizon (it runs to discharge); remove 'within'")
        if set(PRIORITIES) <= set(self.exclude_priority):
            raise ValueError("every priority is excluded: the label can never be true")
        return self


class Split(_Strict):
    by: Literal["patient", "time", "site"] = "patient"
    fractions: dict[Literal["train", "calibration", "test"], Annotated[float, Field(ge=0, le=1)]] = Field(
        default_factory=lambda: {"train": 0.6, "calibration": 0.2, "test": 0.2})
    seed: Annotated[int, Field(ge=0)] = 0
    test_from: dt.date | None = None  # by: time
    test_site: str | None = None  # by: site (name, id or key as in the encounters table)

    @model_validator(mode="after")
    def _consistent(self) -> Split:
        total = sum(self.fractions.values())
        if abs(total - 1.0) > 1e-9:
            raise ValueError(f"split fractions must sum to 1, got {total:g}")
        if self.by == "time" and self.test_from is None:
            raise ValueError("split by time needs 'test_from: YYYY-MM-DD'")
        if self.by == "site" and not self.test_site:
            raise ValueError("split by site needs 'test_site'")
        return self


class Task(_Strict):
    """A prediction task. Load with `Task.from_yaml(path)` or `load_task(name)`."""

    name: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")]
    description: str
    index: Index
    exclude: tuple[str | AgeUnder, ...] = ()
    label: Label
    censor_at_data_end: bool = True
    split: Split = Field(default_factory=Split)

    @field_validator("exclude")
    @classmethod
    def _exclusions(cls, v: tuple[str | AgeUnder, ...]) -> tuple[str | AgeUnder, ...]:
        for item in v:
            if isinstance(item, str) and item not in EXCLUSIONS:
                hint = difflib.get_close_matches(item, EXCLUSIONS, n=1)
                raise ValueError(f"unknown exclusion {item!r}" + (f" (did you mean {hint[0]!r}?)" if hint else
                                                                  f" (known: {', '.join(EXCLUSIONS)})"))
        return v

    @property
    def min_age(self) -> float | None:
        ages = [e.age_under for e in self.exclude if isinstance(e, AgeUnder)]
        return max(ages) if ages else None

    @property
    def exclusions(self) -> tuple[str, ...]:
        return tuple(e for e in self.exclude if isinstance(e, str))

    @classmethod
    def from_yaml(cls, path: str | Path) -> Task:
        return cls.from_text(*read_spec(path, TaskSpecError, "task"))

    @classmethod
    def from_text(cls, text: str, source: str = "<task>") -> Task:
        return parse_spec(cls, text, source, TaskSpecError)


def _known(values: tuple[str, ...], allowed: tuple[str, ...], what: str) -> tuple[str, ...]:
    for v in values:
        if v not in allowed:
            raise ValueError(f"unknown {what} {v!r} (known: {', '.join(allowed)})")
    return values


def load_task(name_or_path: str | Path) -> Task:
    """A task by file path or by name (`readmission-30d`, looked up in $CARELOOP_TASKS, then tasks/)."""
    return Task.from_yaml(find_spec(name_or_path, "CARELOOP_TASKS", "tasks", TaskSpecError, "task"))
