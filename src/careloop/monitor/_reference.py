"""The monitor's training reference: what the model was fitted on, summarised so that later stays can be compared.

`careloop train` computes it from the training rows in memory and stores it in the bundle as `monitor_reference.json`
(hashed with every other file, so a changed reference fails `verify`); `careloop monitor` reads it from there, so
it never depends on which store is monitored, nor on the training store still holding the same data.

Which rows, by one rule (`reference_masks`), at training time and in the monitor's fallback alike:
- **inputs**: the stays of the training split (labelled, as the estimators saw them) indexed in the last
  `reference_months` (12) months before the last training stay. The most recent months, because features that
  look back over the whole record (days since the last discharge, prior admissions, comorbidity indices) drift for
  years after a record begins: an older reference would report that as drift in every period.
- **the risk score**: the calibration split's stays over the same months, scored by the final (calibrated) model.
  Not the training rows: the estimators were fitted on those, and their scores there are more spread than on any
  new stay, so an output PSI against them would report the model's own fit as drift. Its mean and the share over
  the operating threshold (by construction near the policy's budget) are the output's reference figures.

Per input: bins fixed on the reference (deciles of a numeric column, or a bin per value when it has few, the
commonest categories of any other, a missing bin; see `careloop.monitor._stats.make_binning`) and the counts in
them; so the missingness is there too.

The file also lists the stays used to develop the model (training and calibration splits) by the pseudonyms of
`predictions.parquet` (`careloop.workflows.train.pseudonym`, salt "row"), so that the monitor leaves exactly those
out of its performance figures on the training store and none on another hospital's store.

`bins`, `max_categories` and `reference_months` are the monitor config's defaults at training time; a monitor config
asking for others rebuilds the reference from the monitored store's training stays (and says so).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from careloop.monitor._periods import add_months
from careloop.monitor._stats import Binning, make_binning

FILE = "monitor_reference.json"
FILE_SCHEMA = "careloop.monitor-reference/1"
SCORE = "risk"
US = 1_000_000
PSEUDONYM_SALT = "row"  # the salt of predictions.parquet's `row` column
RULE = ("inputs: the training split's stays indexed {span}; risk score: the calibration split's stays over the same "
        "months, scored by the final model")


def rule_text(months: int) -> str:
    return RULE.format(span=f"in the last {months} months before the last training stay" if months else "at any time")


def us_of(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Microseconds since the epoch (UTC) of a timestamp column."""
    return pc.cast(pc.cast(col, pa.timestamp("us", tz="UTC")), pa.int64()).to_numpy(zero_copy_only=False)


def iso(us: int | float | None) -> str | None:
    if us is None:
        return None
    return dt.datetime.fromtimestamp(us / US, dt.UTC).isoformat(timespec="seconds")


def column_labels(describe: list[dict], units: dict[str, str]) -> dict[str, str]:
    """Clinical names of the inputs ("creatinine, last in the stay"), for the report; {} when they cannot be made."""
    from careloop.explain import column_infos

    try:
        infos = column_infos(describe or [], units or {})
    except Exception:  # labels are decoration; never fail a monitoring run or a training on them
        return {}
    return {i.column: f"{i.label}{', ' + i.aggregation if i.aggregation else ''}" for i in infos}


@dataclass(frozen=True)
class ColumnReference:
    """One column's reference distribution: its bins, the counts in them, and the rows and patients behind them."""

    binning: Binning
    counts: tuple[int, ...]
    rows: int
    patients: int
    label: str = ""

    @property
    def missing(self) -> float:
        return self.counts[-1] / self.rows if self.rows else 0.0

    def to_dict(self) -> dict:
        return {"binning": self.binning.to_dict(), "counts": list(self.counts), "rows": self.rows,
                "patients": self.patients, "label": self.label, "missing": self.missing}

    @classmethod
    def from_dict(cls, d: dict) -> ColumnReference:
        return cls(Binning.from_dict(d["binning"]), tuple(int(c) for c in d["counts"]), int(d["rows"]),
                   int(d["patients"]), d.get("label", ""))


@dataclass(frozen=True)
class Reference:
    """The training reference of a bundle: per-input histograms, the risk score's, and the validated figures.

    `rows`, `patients`, `first_index` and `last_index` describe the input rows (training split); `score` carries its
    own rows and patients (`score_split`). `development_last_index`: the last stay used to develop the model
    (training or calibration split), after which monitoring starts by default. `source`: where it came from
    ("bundle": stored at training; otherwise how it was rebuilt). `baseline`: the validation report's test-split
    figures (read from the bundle's report.json, never stored here)."""

    bundle_id: str | None
    rows: int
    patients: int
    first_index: str | None
    last_index: str | None
    months: int
    bins: int
    max_categories: int
    columns: dict[str, ColumnReference]
    score: ColumnReference
    flag_rate: float | None
    mean_risk: float | None
    baseline: dict
    score_split: str = "calibration"
    development_last_index: str | None = None
    source: str = ""

    def matches(self, cfg) -> bool:
        """Made with the bins, categories and months `cfg` (a MonitorConfig) asks for."""
        return (self.months == cfg.reference_months and self.bins == cfg.bins
                and self.max_categories == cfg.max_categories)

    def compatible(self, bundle_id: str, cfg) -> bool:
        """Made for this bundle, with these settings and by the current rule (a reference saved by an earlier
        careloop, whose risk-score histogram was on training rows, is not)."""
        return self.bundle_id == bundle_id and self.matches(cfg) and self.score_split == "calibration"

    def settings(self) -> str:
        return f"bins {self.bins}, max_categories {self.max_categories}, reference_months {self.months}"

    def to_dict(self) -> dict:
        return {"bundle_id": self.bundle_id, "source": self.source, "rule": rule_text(self.months),
                "rows": self.rows, "patients": self.patients, "first_index": self.first_index,
                "last_index": self.last_index, "development_last_index": self.development_last_index,
                "months": self.months, "bins": self.bins, "max_categories": self.max_categories,
                "columns": {k: v.to_dict() for k, v in self.columns.items()}, "score": self.score.to_dict(),
                "score_split": self.score_split, "flag_rate": self.flag_rate, "mean_risk": self.mean_risk,
                "baseline": self.baseline}

    @classmethod
    def from_dict(cls, d: dict) -> Reference:
        return cls(d.get("bundle_id"), int(d["rows"]), int(d["patients"]), d.get("first_index"), d.get("last_index"),
                   int(d["months"]), int(d["bins"]), int(d["max_categories"]),
                   {k: ColumnReference.from_dict(v) for k, v in d["columns"].items()},
                   ColumnReference.from_dict(d["score"]), d.get("flag_rate"), d.get("mean_risk"),
                   d.get("baseline") or {}, d.get("score_split", "train"), d.get("development_last_index"),
                   d.get("source", ""))


def reference_masks(index_us: np.ndarray, split: np.ndarray, development: np.ndarray, months: int
                    ) -> tuple[np.ndarray, np.ndarray, int | None]:
    """(input rows, score rows, last development index) by the reference rule, over rows with index times
    `index_us`, splits `split` and `development` (the rows used to develop the model: labelled, in the training or
    calibration split). No training row: two empty masks and None."""
    train = development & (split == "train")
    calib = development & (split == "calibration")
    if not train.any():
        return train, calib, None
    last_train = int(index_us[train].max())
    lo = np.iinfo(np.int64).min
    if months:
        lo = int(add_months(dt.datetime.fromtimestamp(last_train / US, dt.UTC), -months).timestamp() * US)
    window = index_us >= lo
    return train & window, calib & window, int(index_us[development].max())


def build_reference(features: list[str], inputs: pa.Table, input_patients: np.ndarray, input_index_us: np.ndarray,
                    scores: np.ndarray, score_patients: np.ndarray, *, threshold: float | None, labels: dict,
                    bins: int, max_categories: int, months: int, development_last_us: int | None,
                    bundle_id: str | None = None, baseline: dict | None = None, source: str = "",
                    score_split: str = "calibration") -> Reference:
    """The reference from the input rows (`inputs`, one row per stay, with their patients and index times) and the
    risk scores of the score rows (with their patients)."""
    n = inputs.num_rows
    n_pat = len(np.unique(input_patients)) if n else 0
    cols = {}
    for c in features:
        b = make_binning(c, inputs.column(c), bins=bins, max_categories=max_categories)
        cols[c] = ColumnReference(b, tuple(int(x) for x in b.counts(inputs.column(c))), n, n_pat, labels.get(c, c))
    scores = np.asarray(scores, dtype=float)
    m = len(scores)
    sb = make_binning(SCORE, scores, bins=bins)
    score = ColumnReference(sb, tuple(int(x) for x in sb.counts(scores)), m,
                            len(np.unique(score_patients)) if m else 0, "predicted risk")
    return Reference(
        bundle_id=bundle_id, rows=n, patients=n_pat,
        first_index=iso(int(input_index_us.min())) if n else None,
        last_index=iso(int(input_index_us.max())) if n else None,
        months=months, bins=bins, max_categories=max_categories, columns=cols, score=score,
        flag_rate=float(np.mean(scores >= threshold)) if m and threshold is not None else None,
        mean_risk=float(np.mean(scores)) if m else None, baseline=baseline or {}, score_split=score_split,
        development_last_index=iso(development_last_us), source=source)


# ---------------------------------------------------------------------------------------------------------------------
# at training time, and the file


def pseudonyms(ids: Iterable) -> np.ndarray:
    """The stays' pseudonyms as in predictions.parquet (`row` column)."""
    from careloop.workflows.train import pseudonym

    return np.asarray(pseudonym([str(v) for v in ids], PSEUDONYM_SALT), dtype=object)


def training_reference(features: list[str], train: pa.Table, calibration: pa.Table, calibration_scores: np.ndarray,
                       *, threshold: float | None, labels: dict, cfg=None) -> dict:
    """The content of `monitor_reference.json` for a model trained on `train` and calibrated on `calibration` (the
    labelled rows of those splits, with `row_id`, `patient_id`, `index_time` and the inputs), whose final model
    scored the calibration rows `calibration_scores`. `cfg`: a MonitorConfig (its defaults when None)."""
    from careloop.monitor._config import MonitorConfig

    cfg = cfg or MonitorConfig()
    both = pa.concat_tables([train.select(["row_id", "patient_id", "index_time"]),
                             calibration.select(["row_id", "patient_id", "index_time"])])
    index_us = us_of(both.column("index_time"))
    split = np.asarray(["train"] * train.num_rows + ["calibration"] * calibration.num_rows, dtype=object)
    patients = np.asarray(both.column("patient_id").to_pylist(), dtype=object)
    in_mask, score_mask, last_dev = reference_masks(index_us, split, np.ones(len(split), dtype=bool),
                                                    cfg.reference_months)
    n_train = train.num_rows
    ref = build_reference(
        features, train.filter(pa.array(in_mask[:n_train])), patients[in_mask], index_us[in_mask],
        np.asarray(calibration_scores, dtype=float)[score_mask[n_train:]], patients[score_mask],
        threshold=threshold, labels=labels, bins=cfg.bins, max_categories=cfg.max_categories,
        months=cfg.reference_months, development_last_us=last_dev, source="bundle")
    doc = {"schema": FILE_SCHEMA, **ref.to_dict()}
    for k in ("bundle_id", "baseline", "source"):  # the bundle's id is its files' hash; the baseline is report.json's
        doc.pop(k)
    doc["development"] = {
        "pseudonym": f"blake2b-64 of '{PSEUDONYM_SALT}:<stay id>' (the row pseudonyms of predictions.parquet)",
        "train": sorted(pseudonyms(train.column("row_id").to_pylist()).tolist()),
        "calibration": sorted(pseudonyms(calibration.column("row_id").to_pylist()).tolist())}
    return doc


@dataclass(frozen=True)
class Stored:
    """A bundle's stored reference and the pseudonyms of the stays used to develop it, by split."""

    reference: Reference
    development: dict[str, frozenset[str]]


class ReferenceFileError(ValueError):
    pass


def read_stored(bundle, baseline: dict) -> Stored | None:
    """The bundle's `monitor_reference.json` (None for a bundle made before it existed); ReferenceFileError when it
    cannot be read."""
    if FILE not in bundle.files:
        return None
    try:
        doc = bundle.read_json(FILE)
        if doc.get("schema") != FILE_SCHEMA:
            raise ReferenceFileError(f"schema {doc.get('schema')!r}, expected {FILE_SCHEMA}")
        ref = Reference.from_dict(doc)
        dev = {s: frozenset(doc["development"][s]) for s in ("train", "calibration")}
    except ReferenceFileError as e:
        raise ReferenceFileError(f"{bundle.path.name}/{FILE}: {e}") from None
    except (ValueError, KeyError, TypeError) as e:
        raise ReferenceFileError(f"{bundle.path.name}/{FILE} is unreadable ({type(e).__name__}: {e})") from None
    return Stored(replace(ref, bundle_id=bundle.bundle_id, baseline=baseline, source="bundle"), dev)
