"""`careloop evaluate`: local validation of any model's scores on the hospital's own cases.

A purchasing committee scores the hospital's cases with each product and compares them side by side: the same
evaluation (discrimination, calibration, decision curve, thresholds, fairness) and the same report as careloop's
own models. The first score is the primary; each other is compared with it by paired bootstrap.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from careloop.errors import CareloopError
from careloop.workflows._data import _labels, read_table


def _scores(t: pa.Table, col: str) -> np.ndarray:
    if col not in t.column_names:
        raise CareloopError(f"--score: no column {col!r} in the table (columns: {', '.join(t.column_names[:12])})")
    x = pc.cast(t.column(col), pa.float64()).to_numpy(zero_copy_only=False)
    bad = ~np.isfinite(x)
    if bad.any():
        raise CareloopError(f"--score {col}: {int(bad.sum())} row(s) have no score; every case needs one")
    if x.min() < 0 or x.max() > 1:
        raise CareloopError(f"--score {col}: values from {x.min():g} to {x.max():g} are not probabilities in [0, 1]; "
                            "map the product's score to a risk first (or evaluate it with careloop train)")
    return x


def evaluate_scores(path: Path, *, scores: list[str], label: str, positive: str | None, groups: list[str],
                    id_col: str | None, out: Path, policy: str, target: float, n_boot: int,
                    documentation: Path | None, seed: int) -> dict[str, Path]:
    from careloop.evaluation import choose_operating_point, compare, evaluate, fairness
    from careloop.explain import display
    from careloop.reports import load_facts, write_reports

    facts = load_facts(documentation)
    t = read_table(path)
    for flag, col in [("--label", label), *(("--group", g) for g in groups), *([("--id", id_col)] if id_col else [])]:
        if col not in t.column_names:
            raise CareloopError(f"{flag}: no column {col!r} in {path.name}")
    lab = t.column(label)
    y = _labels(lab, positive if positive is not None else
                (None if pa.types.is_boolean(lab.type) else "1"))
    keep = pc.is_valid(y)
    t, y = t.filter(keep), y.filter(keep).to_numpy(zero_copy_only=False).astype(int)
    if y.min() == y.max():
        raise CareloopError(f"--label {label}: the cases need both outcomes ({len(y)} rows, {int(y.sum())} positive)")
    values = {s: _scores(t, s) for s in scores}
    clusters = pc.cast(t.column(id_col), pa.string()).to_pylist() if id_col else None
    primary = scores[0]
    ops = {s: choose_operating_point(y, v, policy=policy, target=target) for s, v in values.items()}
    evals = {s: evaluate(y, v, clusters=clusters, threshold=ops[s].threshold, n_boot=n_boot, seed=seed)
             for s, v in values.items()}
    comps = compare(y, values, primary, clusters=clusters, n_boot=n_boot, seed=seed) if len(scores) > 1 else []
    gvals = {g: pc.cast(t.column(g), pa.string()).to_pylist() for g in groups}
    labels = {(a, v): display(a, v) for a, vals in gvals.items() for v in set(vals) if v is not None}
    fair = fairness(y, values[primary], gvals, threshold=ops[primary].threshold, clusters=clusters,
                    labels=labels, n_boot=n_boot, seed=seed) if groups else None

    def op_dict(s: str) -> dict:
        return {**ops[s].to_dict(), "chosen_on": "the evaluated cases (no separate calibration set)"}

    n_pat = len(set(clusters)) if clusters else len(y)
    report = {
        "schema": "careloop.validation-report/1", "kind": "scores",
        "title": f"Local validation of {', '.join(scores)} on {path.name}",
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "data": {"source": f"{path.name}: one row per case", "label": f"{label}" + (f" = {positive}" if positive
                                                                                    else ""),
                 "positive": positive or "1",
                 "splits": {"test": {"stays": len(y), "patients": n_pat, "positives": int(y.sum()),
                                     "prevalence": float(y.mean()), "first_index": None, "last_index": None}},
                 "excluded": [], "missingness": []},
        "primary": primary, "order": scores,
        "scores": {s: evals[s].to_dict() for s in scores},
        "comparisons": comps,
        "operating_point": op_dict(primary),
        "operating_points": {s: op_dict(s) for s in scores},
        "fairness": fair.to_dict() if fair else {"threshold": ops[primary].threshold, "min_group_size": 50,
                                                 "tolerances": {}, "attributes": {}, "flags": []},
        "importance": [], "example_reasons": [], "team": None,
    }
    out.mkdir(parents=True, exist_ok=True)
    return _named(write_reports(report, facts, out))


def _named(paths) -> dict[str, Path]:
    return {Path(p).name: Path(p) for p in (paths.values() if isinstance(paths, dict) else paths)}
