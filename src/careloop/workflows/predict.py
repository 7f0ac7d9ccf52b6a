"""`careloop predict`: score a flat table or a task's cohort with a verified bundle, one row out per row in."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from careloop.errors import CareloopError
from careloop.registry import Bundle


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


def _inputs_from_store(bundle: Bundle, store: Path, task: str) -> tuple[pa.Table, pa.Array]:
    from careloop.engines import DuckDBEngine
    from careloop.features.engine import extract
    from careloop.features.spec import FeatureSet
    from careloop.tasks.cohort import build_cohort
    from careloop.tasks.spec import load_task

    if "features.yaml" not in bundle.files:
        raise CareloopError("this bundle was trained on a flat table: score it with --table")
    fs = FeatureSet.from_text((bundle.path / "features.yaml").read_text(), "features.yaml (bundle)")
    eng = DuckDBEngine(store)
    cohort = build_cohort(load_task(task), eng, dialect=eng.dialect)
    t = extract(fs, cohort.table, eng).table
    return t, t.column("encounter_id")


def predict(bundle: Bundle, out: Path, *, table: Path | None = None, store: Path | None = None,
            task: str | None = None) -> dict:
    """Write `out` (Parquet or CSV by suffix): id, probability, flagged at the bundle's operating point."""
    if (table is None) == (store is None):
        raise CareloopError("give either --table FILE or --store DIR with --task NAME")
    if store is not None and not task:
        raise CareloopError("--store needs --task")
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


