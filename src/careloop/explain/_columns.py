"""What a model column means: its feature, kind, window, aggregation, code, unit and a short display label."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

from careloop.explain._vocab import vocabulary_of

__all__ = ["MEASUREMENTS", "ColumnInfo", "column_infos", "column_infos_for_table", "column_title", "humanize"]


class Measure(NamedTuple):
    label: str
    unit: str | None  # canonical UCUM unit
    decimals: int  # reporting precision in that unit


# Display label, canonical UCUM unit and usual reporting precision of common LOINC observations.
MEASUREMENTS: dict[str, Measure] = {
    "2951-2": Measure("sodium", "mmol/L", 0),
    "2823-3": Measure("potassium", "mmol/L", 1),
    "2075-0": Measure("chloride", "mmol/L", 0),
    "1963-8": Measure("bicarbonate", "mmol/L", 0),
    "2160-0": Measure("creatinine", "mg/dL", 2),
    "3094-0": Measure("BUN", "mg/dL", 0),
    "2345-7": Measure("glucose", "mg/dL", 0),
    "17861-6": Measure("calcium", "mg/dL", 1),
    "1751-7": Measure("albumin", "g/dL", 1),
    "1975-2": Measure("bilirubin", "mg/dL", 1),
    "1920-8": Measure("AST", "U/L", 0),
    "1742-6": Measure("ALT", "U/L", 0),
    "2524-7": Measure("lactate", "mmol/L", 1),
    "718-7": Measure("hemoglobin", "g/dL", 1),
    "4544-3": Measure("hematocrit", "%", 0),
    "6690-2": Measure("WBC", "10*3/uL", 1),
    "777-3": Measure("platelets", "10*3/uL", 0),
    "6301-6": Measure("INR", None, 1),
    "4548-4": Measure("HbA1c", "%", 1),
    "42637-9": Measure("BNP", "pg/mL", 0),
    "30934-4": Measure("BNP", "pg/mL", 0),
    "33762-6": Measure("NT-proBNP", "pg/mL", 0),
    "33914-3": Measure("eGFR", "mL/min/{1.73_m2}", 0),
    "62238-1": Measure("eGFR", "mL/min/{1.73_m2}", 0),
    "8867-4": Measure("heart rate", "/min", 0),
    "9279-1": Measure("respiratory rate", "/min", 0),
    "8480-6": Measure("systolic BP", "mm[Hg]", 0),
    "8462-4": Measure("diastolic BP", "mm[Hg]", 0),
    "59408-5": Measure("SpO2", "%", 0),
    "2708-6": Measure("SpO2", "%", 0),
    "8310-5": Measure("temperature", "Cel", 1),
    "29463-7": Measure("weight", "kg", 1),
    "8302-2": Measure("height", "cm", 0),
    "39156-5": Measure("BMI", "kg/m2", 1),
    "63512-8": Measure("household size", None, 0),
}

_WORDS = {
    "ed": "ED", "er": "ER", "icu": "ICU", "bp": "BP", "wbc": "WBC", "rbc": "RBC", "bmi": "BMI", "bun": "BUN",
    "hba1c": "HbA1c", "spo2": "SpO2", "inr": "INR", "bnp": "BNP", "egfr": "eGFR", "ldl": "LDL", "hdl": "HDL",
    "los": "length of stay", "ast": "AST", "alt": "ALT", "copd": "COPD", "chf": "CHF", "ckd": "CKD",
    "lace": "LACE", "snf": "SNF", "ama": "AMA", "hgb": "hemoglobin",
}
_WINDOW_SUFFIX = re.compile(r"_(\d+(?:\.\d+)?)(m|h|d|w|y)$|_(in_stay|stay|all|ever)$")
_UNIT_IN_TEXT = re.compile(r"\(([^()\s]{1,16})\)")

# Labels of the vocabularies and of the kinds whose meaning does not depend on the feature's name.
_VOCAB_LABELS = {"sex": "sex", "race": "race", "ethnicity": "ethnicity", "language": "preferred language",
                 "payer": "payer", "discharge_disposition": "discharge disposition", "admit_source": "admission source",
                 "housing": "housing status", "diagnosis": "principal diagnosis"}
_KIND_LABELS = {"age": "age", "length_of_stay": "length of stay", "emergent": "admission priority",
                "admit_source": "admission source", "days_since_discharge": "days since last discharge",
                "principal_diagnosis": "principal diagnosis"}


def humanize(name: str) -> str:
    """A column or feature name as words: "ed_visits_180d" -> "ED visits 180d".

    >>> humanize("urea_nitrogen"), humanize("ed_visits"), humanize("hba1c_last")
    ('urea nitrogen', 'ED visits', 'HbA1c last')
    """
    words = [w for w in re.split(r"[_\s]+", str(name).strip()) if w]
    return " ".join(_WORDS.get(w.lower(), w) for w in words) or str(name)


def _strip_window(name: str) -> str:
    return _WINDOW_SUFFIX.sub("", name) or name


def bare_code(code: str | None) -> str | None:
    """A code without its vocabulary prefix: "LOINC/2951-2" -> "2951-2"."""
    if not code:
        return None
    return code.split("/", 1)[1] if re.match(r"^[A-Z][A-Z0-9_]*/", code) else code


@dataclass(frozen=True)
class ColumnInfo:
    """One model column: the feature it comes from and what a clinician should read for it.

    `kind` is a feature kind of `careloop.features.spec.Feature` (age, static, latest_code, latest_text,
    length_of_stay, emergent, admit_source, principal_diagnosis, encounter_count, days_since_discharge,
    distinct_codes, event_count, comorbidity, measurement, score) or "column" for a flat extract (`aggregation` is
    then "categorical" for a categorical column). `unit` is UCUM; `label` is the short display name ("sodium",
    "admissions").
    """

    column: str
    feature: str | None = None
    kind: str = "column"
    window: str | None = None
    aggregation: str | None = None
    code: str | None = None
    description: str | None = None
    unit: str | None = None
    label: str = ""

    def __post_init__(self) -> None:
        if self.feature is None:
            object.__setattr__(self, "feature", self.column)
        if not self.label:
            object.__setattr__(self, "label", humanize(self.column))

    @property
    def vocabulary(self) -> str | None:
        """The code vocabulary of a categorical column (see `careloop.explain.display`), or None."""
        return _vocabulary(self.kind, self.code, self.feature, self.column)

    @property
    def measure(self) -> Measure | None:
        """The known LOINC observation of a measurement column, or None."""
        return MEASUREMENTS.get(bare_code(self.code) or "")


def _vocabulary(kind: str, code: str | None, feature: str | None, column: str) -> str | None:
    if kind == "admit_source":
        return "admit_source"
    if kind == "principal_diagnosis":
        return "diagnosis"
    if code:
        vocab = vocabulary_of(code) or vocabulary_of(code.split("/", 1)[0] + "/")
        if vocab:
            return vocab
        if kind == "latest_text" and code.startswith("LOINC/"):
            return "loinc_answer"
    if kind in ("static", "latest_code", "latest_text", "column"):
        return vocabulary_of(feature) or vocabulary_of(column)
    return None


def _label(kind: str, feature: str, code: str | None, description: str, vocab: str | None) -> str:
    text = f"{feature} {description}".lower()
    if kind in _KIND_LABELS:
        return _KIND_LABELS[kind]
    if kind == "comorbidity":
        if "charlson" in text:
            return "Charlson comorbidity index"
        if "elixhauser" in text or "walraven" in text:
            return "Elixhauser comorbidity score"
        return humanize(feature)
    if kind == "score":
        if re.search(r"\blace\b", text):
            return "LACE index"
        if re.search(r"\bhospital\b", text):
            return "HOSPITAL score"
        return humanize(feature)
    if kind == "measurement":
        measure = MEASUREMENTS.get(bare_code(code) or "")
        return measure.label if measure else humanize(feature)
    if kind in ("static", "latest_code", "latest_text") and vocab in _VOCAB_LABELS:
        return _VOCAB_LABELS[vocab]
    return humanize(_strip_window(feature))


def _unit(code: str | None, feature: str, column: str, description: str,
          units: Mapping[str, str] | None) -> str | None:
    if units:
        for key in (code, bare_code(code), feature, column):
            if key and units.get(key):
                return units[key]
    measure = MEASUREMENTS.get(bare_code(code) or "")
    if measure:
        return measure.unit
    m = _UNIT_IN_TEXT.search(description)  # "Sodium (mmol/L) during the stay"
    return m.group(1) if m else None


def column_infos(describe_rows: Iterable[Mapping], units: Mapping[str, str] | None = None) -> list[ColumnInfo]:
    """ColumnInfos from `FeatureSet.describe()` rows (column, feature, description, kind, window, aggregation, code).

    `units` maps a measurement's code (e.g. "LOINC/2951-2", with or without its prefix) to its UCUM unit as the store
    holds it; a code it does not list falls back to the canonical unit of a known LOINC observation, then to a unit
    in parentheses in the description.
    """
    out = []
    for row in describe_rows:
        column = str(row["column"])
        feature = str(row.get("feature") or column)
        kind = str(row.get("kind") or "column")
        code = row.get("code")
        description = str(row.get("description") or "")
        vocab = _vocabulary(kind, code, feature, column)
        unit = _unit(code, feature, column, description, units) if kind == "measurement" else None
        out.append(ColumnInfo(column=column, feature=feature, kind=kind, window=row.get("window"),
                              aggregation=row.get("aggregation"), code=code, description=description or None,
                              unit=unit, label=_label(kind, feature, code, description, vocab)))
    return out


def column_infos_for_table(columns: Iterable[str], categorical: Iterable[str] = ()) -> list[ColumnInfo]:
    """ColumnInfos for a flat extract without a feature set: kind "column", the label from the column name, and
    `aggregation="categorical"` for the categorical columns."""
    cats = set(categorical)
    return [ColumnInfo(column=str(c), feature=str(c), kind="column",
                       aggregation="categorical" if c in cats else None, label=humanize(str(c)))
            for c in columns]


_AGG_TITLES = {"min": "lowest {}", "max": "highest {}", "mean": "average {}", "first": "first {}",
               "count": "{} measurements", "trend": "change in {}", "hours_since": "hours since first {}"}


def column_title(info: ColumnInfo, *, ended: bool = True) -> str:
    """A display name for the column itself (for importance tables): "lowest sodium", "admissions (past 6 months)".
    `ended` as in `phrase`: a last value over a stay still open is "latest sodium", not "sodium at discharge".

    >>> column_title(ColumnInfo("sodium_min", "sodium", "measurement", "stay", "min", "LOINC/2951-2", label="sodium"))
    'lowest sodium'
    """
    from careloop.explain._phrases import window_phrase

    label = info.label
    if info.kind == "measurement":
        agg = info.aggregation or "last"
        if agg == "last":
            return f"{label} at discharge" if info.window == "stay" and ended else f"latest {label}"
        return _AGG_TITLES.get(agg, "{} " + agg).format(label)
    if info.kind in ("encounter_count", "distinct_codes", "event_count"):
        when = window_phrase(info.window)
        if when.startswith("in the "):
            return f"{label} ({when.removeprefix('in the ')})"
        return f"{label} {when}".strip()
    return label
