"""The training table, from the event store (task + feature set) or from a flat extract (one row per stay).

Either way the result is one Arrow table with `row_id`, `patient_id`, `label` (0/1), `split`, the feature columns
and the group columns, plus what the report needs to describe where it came from.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from careloop.errors import CareloopError
from careloop.tasks.cohort import split_of

DEFAULT_FRACTIONS = {"train": 0.6, "calibration": 0.2, "test": 0.2}
MISSING_MARKERS = ("", "?", "NA", "N/A", "NULL", "null", "NaN", "nan", "None")
# used to judge fairness, not to predict: a model that uses race can hide under-recording in a group (it learns the
# group's offset), and HTI-1 asks developers to justify any such input
PROTECTED_DEFAULT = ("race", "ethnicity")
STORE_GROUPS = ("sex", "race", "ethnicity", "age_band", "payer", "language", "site")
COMPARATORS = {"lace": "LACE index", "hospital_score": "HOSPITAL score"}
ID_LIKE_SHARE = 0.5  # a text column with more distinct values than this share of rows is an identifier


class DataError(CareloopError):
    pass


@dataclass
class TrainingData:
    table: pa.Table  # row_id, patient_id, label, split, features..., group__<attr>...
    features: list[str]
    categorical: set[str]
    groups: dict[str, str]  # attribute -> column in `table`
    comparators: dict[str, str]  # column -> display name
    describe: list[dict]  # one per feature column (FeatureSet.describe() shape)
    units: dict[str, str]
    source: dict  # what the report says about the input
    specs: dict[str, str] = field(default_factory=dict)  # file name -> text, copied into the bundle
    excluded_columns: list[dict] = field(default_factory=list)
    steps: list[dict] = field(default_factory=list)
    directory: pa.Table | None = None  # the store's Organizations and Locations, for scoring at the bedside

    def split(self, name: str) -> pa.Table:
        return self.table.filter(pc.equal(self.table.column("split"), name))


def age_band(age: pa.ChunkedArray) -> pa.Array:
    """18–44, 45–64, 65–74, 75+ (the bands used in readmission reporting); null stays null."""
    a = age.to_numpy(zero_copy_only=False).astype(float)
    bands = np.select([a < 45, a < 65, a < 75, a >= 75], ["18-44", "45-64", "65-74", "75+"], default="")
    return pa.array([b or None for b in bands], pa.string())


def _labels(col: pa.ChunkedArray, positive: str | None) -> pa.Array:
    """0/1 labels (null when unknown) from a boolean column, or from equality with `positive`."""
    if positive is None:
        if not pa.types.is_boolean(col.type):
            raise DataError("--positive is required unless the label column is boolean")
        return pc.cast(col, pa.int8())
    text = pc.cast(col, pa.string()) if not pa.types.is_string(col.type) else col
    return pc.if_else(pc.is_null(text), pa.scalar(None, pa.int8()),
                      pc.cast(pc.equal(text, str(positive)), pa.int8()))


def from_store(store: Path, task_name: str, features: str = "readmission", *, engine: str = "duckdb",
               exclude: tuple[str, ...] = PROTECTED_DEFAULT, groups: tuple[str, ...] | None = None,
               data_end: dt.datetime | None = None, progress=None) -> TrainingData:
    """Cohort and point-in-time features of `task_name` from the event store. `data_end`: train on the data as it
    stood then (stays indexed after it are left out, outcomes whose window runs past it are censored; features
    only ever see events up to their stay's index time); by default the end of the store's data."""
    from careloop.engines import engine as make_engine
    from careloop.features.engine import extract
    from careloop.features.spec import load_feature_set
    from careloop.specfile import find_spec
    from careloop.tasks.cohort import build_cohort
    from careloop.tasks.spec import load_task

    task = load_task(task_name)
    fs = load_feature_set(features)
    if not Path(store).is_dir():
        raise DataError(f"--store: {store} is not an event store directory")
    eng = make_engine(engine, store)
    if progress:
        progress("building the cohort")
    cohort = build_cohort(task, eng, dialect=eng.dialect, data_end=data_end)
    if cohort.table.num_rows == 0:
        raise DataError(f"the store holds no index stays of task {task.name}"
                        + (f" up to --data-end {data_end:%Y-%m-%d}" if data_end else ""))
    if progress:
        progress("extracting features")
    feat = extract(fs, cohort.table, eng).table
    ctx = cohort.table.select(["encounter_id", "site"]).rename_columns(["encounter_id", "group__site"])
    t = feat.join(ctx, "encounter_id", join_type="left outer").sort_by("encounter_id")
    bad = [c for c in exclude if c not in fs.columns]
    if bad:
        raise DataError(f"--exclude: {bad[0]!r} is not a column of feature set {fs.name}")
    cols = [c for c in fs.columns if c not in exclude]
    extra = {}
    for attr in groups or STORE_GROUPS:
        if attr == "site":
            continue
        if attr == "age_band":
            extra["group__age_band"] = age_band(t.column("age"))
        elif attr in t.column_names:
            extra[f"group__{attr}"] = pc.cast(t.column(attr), pa.string())
        else:
            raise DataError(f"--group: {attr!r} is neither a feature column nor one of {', '.join(STORE_GROUPS)}")
    for k, v in extra.items():
        t = t.append_column(k, v)
    attrs = list(groups or STORE_GROUPS)
    label = pc.cast(t.column("label"), pa.int8())
    t = t.set_column(t.column_names.index("label"), "label", label)
    t = t.rename_columns(["row_id" if c == "encounter_id" else c for c in t.column_names])
    units = _units(eng, [d["code"] for d in fs.describe() if d["kind"] == "measurement"])
    summary = cohort.summary()
    task_path, fs_path = find_spec(task_name, "CARELOOP_TASKS", "tasks", DataError, "task"), None
    fs_path = find_spec(features, "CARELOOP_FEATURES", "features", DataError, "feature set")
    comparators = {c: n for c, n in COMPARATORS.items() if c in fs.columns}
    return TrainingData(
        table=t, features=cols, categorical=set(), groups={a: f"group__{a}" for a in attrs},
        comparators=comparators, describe=[d for d in fs.describe() if d["column"] in cols], units=units,
        source={"kind": "store", "store": str(store), "task": task.name, "task_description": task.description,
                "feature_set": fs.name, "label": f"{task.name}: {task.description}", "positive": "true",
                "index": "discharge of an inpatient stay", "exclusions": [str(e) for e in task.exclusions],
                "min_age": task.min_age, "data_end": str(cohort.data_end) if cohort.data_end else None,
                "data_end_given": data_end is not None,
                "censored": sum(v["censored"] for v in summary["splits"].values()),
                "excluded_inputs": list(exclude), "split": {"from": "task", "by": task.split.by,
                                                            "seed": task.split.seed}},
        specs={"task.yaml": Path(task_path).read_text(), "features.yaml": Path(fs_path).read_text()},
        steps=[{"step": s["step"], "stays": s["removed"]} for s in cohort.steps],
        directory=eng.arrow("SELECT * FROM directory"))


def _units(eng, codes: list[str]) -> dict[str, str]:
    codes = sorted({c for c in codes if c})
    if not codes:
        return {}
    from careloop.tasks.cohort import sql_literal

    lst = ", ".join(sql_literal(c) for c in codes)
    # the unit of the values features read (a value with no conversion to its code's unit keeps its own unit
    # but no numeric_value, and must not name the column's unit)
    t = eng.arrow(f"SELECT code, min(unit) AS unit FROM events WHERE code IN ({lst}) AND unit IS NOT NULL "
                  "AND numeric_value IS NOT NULL GROUP BY code")
    return dict(zip(t.column("code").to_pylist(), t.column("unit").to_pylist(), strict=True))


def read_table(path: Path, missing: tuple[str, ...] = MISSING_MARKERS, *, flag: str = "--table") -> pa.Table:
    """A CSV (missing-value markers become nulls) or Parquet file; errors name the option `flag` that gave it."""
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    if not path.is_file():
        raise DataError(f"{flag}: {path} does not exist")
    suffixes = "".join(path.suffixes).lower()
    try:
        if suffixes.endswith(".parquet"):
            return pq.read_table(path)
        if suffixes.endswith((".csv", ".csv.gz", ".tsv")):
            conv = pcsv.ConvertOptions(null_values=list(missing), strings_can_be_null=True)
            parse = pcsv.ParseOptions(delimiter="\t" if ".tsv" in suffixes else ",")
            return pcsv.read_csv(path, parse_options=parse, convert_options=conv)
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"{flag}: cannot read {path}: {str(e).splitlines()[0]}") from None
    raise DataError(f"{flag}: {path.name} is neither .csv, .tsv nor .parquet")


def check_patient_disjoint(pids: pa.ChunkedArray | pa.Array, split: pa.ChunkedArray | pa.Array, what: str) -> None:
    """Refuse splits that put one patient in more than one of train, calibration and test: the test split would not
    be held out (its patients' other stays were learnt from), and the report says it is.

    >>> check_patient_disjoint(pa.array(["a", "b"]), pa.array(["train", "test"]), "split")
    >>> pids, split = pa.array(["a", "a", "b"]), pa.array(["train", "test", "test"])
    >>> check_patient_disjoint(pids, split, "split")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    careloop.workflows._data.DataError: split: 1 patient(s) are in more than one split (e.g. 'a' in test and train)...
    """
    t = pa.table({"pid": pids, "split": split})
    t = t.filter(pc.is_in(t.column("split"), pa.array(["train", "calibration", "test"])))
    per = t.group_by("pid").aggregate([("split", "distinct")])
    many = per.filter(pc.greater(pc.list_value_length(per.column("split_distinct")), 1))
    if many.num_rows:
        pid, splits = min(zip(many.column("pid").to_pylist(), many.column("split_distinct").to_pylist(),
                              strict=True), key=lambda r: r[0])
        raise DataError(f"{what}: {many.num_rows:,} patient(s) are in more than one split (e.g. {pid!r} in "
                        f"{' and '.join(sorted(splits))}); all of a patient's stays must share one split, or the "
                        f"test split is not held out")


def from_table(path: Path, *, label: str, positive: str | None, id_col: str, groups: tuple[str, ...] = (),
               row_id: str | None = None, exclude: tuple[str, ...] = (), categorical: tuple[str, ...] = (),
               missing: tuple[str, ...] = MISSING_MARKERS, split_col: str | None = None,
               seed: int = 0) -> TrainingData:
    """A flat extract: one row per stay, split by patient (`id_col`) unless a split column is named."""
    t = read_table(path, missing)
    named = [("--label", label), ("--id", id_col), *(("--group", g) for g in groups),
             *(("--exclude", e) for e in exclude), *(("--categorical", c) for c in categorical)]
    if row_id:
        named.append(("--row-id", row_id))
    if split_col:
        named.append(("--split-column", split_col))
    for flag, col in named:
        if col not in t.column_names:
            raise DataError(f"{flag}: no column {col!r} in {path.name} (columns: {', '.join(t.column_names[:12])}"
                            f"{', ...' if t.num_columns > 12 else ''})")
    y = _labels(t.column(label), positive)
    if pc.sum(y).as_py() in (None, 0):
        raise DataError(f"--positive: no row of {label!r} equals {positive!r}")
    pids = pc.cast(t.column(id_col), pa.string())
    if pids.null_count:
        raise DataError(f"--id: {pids.null_count} row(s) have no {id_col!r}; every row needs its patient")
    if split_col:
        split = pc.cast(t.column(split_col), pa.string())
        unknown = set(pc.unique(split).to_pylist()) - {"train", "calibration", "test", None}
        if unknown:
            raise DataError(f"--split-column: values must be train, calibration or test; found {sorted(unknown)[0]!r}")
        check_patient_disjoint(pids, split, f"--split-column {split_col!r}")
    else:
        split = pa.array([split_of(seed, p, DEFAULT_FRACTIONS) for p in pids.to_pylist()], pa.string())
    rid = pc.cast(t.column(row_id), pa.string()) if row_id else pa.array([str(i) for i in range(t.num_rows)])
    reserved = {label, id_col, *(c for c in (row_id, split_col) if c)}
    dropped, feats = [], []
    for c in t.column_names:
        if c in reserved or c in exclude:
            continue
        col = t.column(c)
        if c not in categorical and pa.types.is_string(col.type):
            distinct = len(pc.unique(col))
            if distinct > max(50, ID_LIKE_SHARE * t.num_rows):
                dropped.append({"column": c, "reason": f"identifier-like text ({distinct:,} distinct values)"})
                continue
        if col.null_count == t.num_rows:
            dropped.append({"column": c, "reason": "always missing"})
            continue
        feats.append(c)
    clash = [c for c in feats if c in _OWN_COLUMNS]
    if clash:  # it would stand beside careloop's own column of that name in the training table
        hint = (f"give --split-column {clash[0]} to split by it, or --exclude {clash[0]}" if clash[0] == "split"
                else f"rename it or give --exclude {clash[0]}")
        raise DataError(f"column {clash[0]!r} of {path.name} has the name of one careloop adds to each row: {hint}")
    out = pa.table({"row_id": rid, "patient_id": pids, "label": y, "split": split})
    for c in feats:
        out = out.append_column(c, t.column(c))
    for g in groups:
        out = out.append_column(f"group__{g}", pc.cast(t.column(g), pa.string()))
    describe = [{"column": c, "feature": c, "description": c, "kind": "column", "window": None,
                 "aggregation": None, "code": None} for c in feats]
    unlabelled = y.null_count
    return TrainingData(
        table=out, features=feats, categorical=set(categorical), groups={g: f"group__{g}" for g in groups},
        comparators={}, describe=describe, units={},
        source={"kind": "table", "file": path.name, "label": f"{label} = {positive}", "positive": str(positive),
                "id": id_col, "missing_markers": list(missing), "censored": unlabelled,
                "excluded_inputs": list(exclude), "split": _table_split(split_col, seed)},
        specs={"table.json": _table_spec(label, positive, id_col, row_id, groups, exclude, categorical, missing)},
        excluded_columns=dropped)


_OWN_COLUMNS = ("row_id", "patient_id", "label", "split")  # the training table's columns besides the features


def _table_split(split_col: str | None, seed: int) -> dict:
    """Where a flat extract's split came from: its own column, or a hash of (seed, patient id)."""
    if split_col:
        return {"from": "column", "column": split_col, "seed": None}
    return {"from": "seed", "by": "patient", "seed": seed}


def _table_spec(label, positive, id_col, row_id, groups, exclude, categorical, missing) -> str:
    import json

    return json.dumps({"label": label, "positive": positive, "id": id_col, "row_id": row_id, "groups": list(groups),
                       "exclude": list(exclude), "categorical": list(categorical), "missing": list(missing)}, indent=1)
