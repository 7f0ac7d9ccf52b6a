"""`careloop predict`: score a flat table, or the cohort of the task a bundle was trained for, with a verified bundle,
one row out per row in."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from careloop.errors import CareloopError
from careloop.registry import Bundle

if TYPE_CHECKING:
    from careloop.tasks.spec import Task


def _inputs_from_table(bundle: Bundle, path: Path) -> tuple[pa.Table, pa.Array]:
    from careloop.workflows._data import MISSING_MARKERS, read_table

    spec = bundle.read_json("table.json") if "table.json" in bundle.files else {}
    t = read_table(path, tuple(spec.get("missing", MISSING_MARKERS)))
    rid_col = spec.get("row_id")
    if rid_col and rid_col in t.column_names:
        ids = pc.cast(t.column(rid_col), pa.string())
    elif "encounter_id" in t.column_names:
        ids = pc.cast(t.column("encounter_id"), pa.string())
    else:
        ids = pa.array([str(i) for i in range(t.num_rows)])
    return t, ids


def _bundle_task(bundle: Bundle) -> Task | None:
    """The task the bundle was trained for (its task.yaml), or None for a bundle without one."""
    from careloop.tasks.spec import Task

    if "task.yaml" not in bundle.files:
        return None
    return Task.from_text((bundle.path / "task.yaml").read_text(), "task.yaml (bundle)")


def _differences(given: Task, stored: Task) -> list[str]:
    """The fields in which two tasks define different stays or outcomes. Name and prose aside, and the split too:
    it only divides the development data, and scoring reads every index stay whatever its split."""
    a, b = given.model_dump(mode="json"), stored.model_dump(mode="json")
    return [k for k in a if k not in ("name", "description", "split") and a[k] != b[k]]


def scoring_task(bundle: Bundle, task: str | None) -> Task:
    """The task whose cohort to score: the bundle's own, so a model only ever scores the stays it was built for.

    A --task that defines another cohort is refused rather than scored (a readmission model's "risks" on the
    mortality cohort look like predictions and mean nothing); a bundle without task.yaml needs --task."""
    from careloop.tasks.spec import load_task

    stored = _bundle_task(bundle)
    if stored is None:
        if not task:
            raise CareloopError("this bundle holds no task.yaml: give --task NAME for the stays to score")
        return load_task(task)
    if task:
        diff = _differences(load_task(task), stored)
        if diff:
            raise CareloopError(f"--task {task} is not the task this bundle was trained for ({stored.name}, its "
                                f"task.yaml): {', '.join(diff)} differ; leave out --task to score that task's stays")
    return stored


def _inputs_from_store(bundle: Bundle, store: Path, task: str | None) -> tuple[pa.Table, pa.Array]:
    from careloop.engines import DuckDBEngine
    from careloop.features.engine import extract
    from careloop.features.spec import FeatureSet
    from careloop.tasks.cohort import build_cohort

    if "features.yaml" not in bundle.files:
        raise CareloopError("this bundle was trained on a flat table: score it with --table")
    spec = scoring_task(bundle, task)
    fs = FeatureSet.from_text((bundle.path / "features.yaml").read_text(), "features.yaml (bundle)")
    eng = DuckDBEngine(store)
    cohort = build_cohort(spec, eng, dialect=eng.dialect)
    t = extract(fs, cohort.table, eng).table
    return t, t.column("encounter_id")


def predict(bundle: Bundle, out: Path, *, table: Path | None = None, store: Path | None = None,
            task: str | None = None) -> dict:
    """Write `out` (Parquet or CSV by suffix): id, probability, flagged at the bundle's operating point.

    With `store`, the stays scored are the index stays of the bundle's own task (`task` only checks it)."""
    if (table is None) == (store is None):
        raise CareloopError("give either --table FILE or --store DIR")
    if table is not None and task:
        raise CareloopError("--task applies to --store (a --table is scored row by row)")
    model = bundle.model()
    t, ids = _inputs_from_table(bundle, table) if table else _inputs_from_store(bundle, store, task)
    p = model.predict_proba(t)
    op = bundle.metadata.get("operating_point") or {}
    thr = op.get("threshold")
    cols = {"id": ids, "probability": pa.array(p, pa.float64())}
    if thr is not None:
        cols["flagged"] = pa.array(p >= thr)
    cols["bundle_id"] = pa.array([bundle.bundle_id] * t.num_rows)
    result = pa.table(cols)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".csv":
        import pyarrow.csv as pcsv

        pcsv.write_csv(result, out)
    else:
        pq.write_table(result, out)
    return {"rows": t.num_rows, "out": str(out), "bundle_id": bundle.bundle_id, "threshold": thr,
            "flagged": int(np.sum(p >= thr)) if thr is not None else None,
            "mean_probability": float(np.mean(p)) if len(p) else None}


