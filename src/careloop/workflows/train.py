"""`careloop train`: fit, calibrate, choose an operating point, validate on test, explain, document, register.

The order matters and is enforced here: estimators see only the training patients, calibration, model choice and
the operating point see only the calibration split, and the test split is scored once, at the end, for the report.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from careloop import __version__
from careloop.errors import CareloopError
from careloop.workflows._data import TrainingData

PREDICTIONS = "predictions.parquet"
EXAMPLES = 5
IMPORTANCE_SAMPLE = 5000


@dataclass
class TrainConfig:
    name: str = "model"
    estimators: tuple[str, ...] = ("lightgbm", "logistic")
    calibration: str = "sigmoid"
    policy: str = "budget"  # budget | ppv | sensitivity | threshold
    target: float = 0.10
    n_boot: int = 1000
    seed: int = 0
    min_group_size: int = 50
    tolerances: dict[str, float] | None = None
    documentation: Path | None = None
    clinician: Path | None = None  # a table of row id -> the clinician's own risk estimate, for the team section
    clinician_column: str = "clinician_risk_30d"
    threads: int = 0
    extra: dict = field(default_factory=dict)


def code_version() -> str:
    """careloop's version and, when run from a git checkout, the commit (with +dirty for local changes)."""
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=here, capture_output=True, text=True,
                             timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return f"careloop {__version__} (git {rev}{'+dirty' if dirty else ''})"
    except (OSError, subprocess.SubprocessError):
        return f"careloop {__version__}"


def fingerprint(data: TrainingData) -> str:
    """SHA-256 of the rows the model was developed on (ids, labels, splits and every feature, in row order)."""
    cols = ["row_id", "patient_id", "label", "split", *data.features]
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, data.table.select(cols).schema) as w:
        w.write_table(data.table.select(cols).combine_chunks())
    return "sha256:" + hashlib.sha256(sink.getvalue().to_pybytes()).hexdigest()


def pseudonym(values: list[str], salt: str) -> list[str]:
    """Stable pseudonyms for ids stored in a bundle (predictions are kept, patient ids are not)."""
    return [hashlib.blake2b(f"{salt}:{v}".encode(), digest_size=8).hexdigest() for v in values]


def _y(t: pa.Table) -> np.ndarray:
    return t.column("label").to_numpy(zero_copy_only=False).astype(np.int64)


def _split_summary(t: pa.Table) -> dict:
    y = _y(t)
    times = t.column("index_time") if "index_time" in t.column_names else None
    first = last = None
    if times is not None and len(times):
        first, last = pc.min(times).as_py(), pc.max(times).as_py()
    return {"stays": t.num_rows, "patients": len(pc.unique(t.column("patient_id"))), "positives": int(y.sum()),
            "prevalence": float(y.mean()) if len(y) else None,
            "first_index": first.isoformat() if first else None, "last_index": last.isoformat() if last else None}


def _missingness(data: TrainingData, train: pa.Table, test: pa.Table, labels: dict[str, str]) -> list[dict]:
    out = []
    for c in data.features:
        out.append({"column": c, "label": labels.get(c, c),
                    "train": train.column(c).null_count / max(train.num_rows, 1),
                    "test": test.column(c).null_count / max(test.num_rows, 1)})
    return out


def train(data: TrainingData, registry: Path, config: TrainConfig, progress=None):
    """Train, validate and register; return the registered `Bundle`."""
    from careloop.evaluation import choose_operating_point, compare, evaluate, fairness
    from careloop.explain import column_infos, column_infos_for_table, display, global_importance, reasons
    from careloop.modeling import Calibrator, fit_candidates
    from careloop.registry import Registry, release_time
    from careloop.reports import load_facts, write_reports

    timings: dict[str, float] = {}
    clock = {"phase": "checking inputs", "t": time.perf_counter()}

    def step(msg: str) -> None:
        now = time.perf_counter()
        timings[clock["phase"]] = timings.get(clock["phase"], 0.0) + now - clock["t"]
        clock.update(phase=msg.split(" (")[0], t=now)
        if progress:
            progress(msg)

    facts = load_facts(config.documentation)  # fail on a bad documentation file before any work
    created = release_time().isoformat(timespec="seconds")  # likewise a bad SOURCE_DATE_EPOCH
    data.table = data.table.filter(pc.is_valid(data.table.column("label")))
    train_t, calib_t, test_t = (data.split(s) for s in ("train", "calibration", "test"))
    for name, t in (("train", train_t), ("calibration", calib_t), ("test", test_t)):
        y = _y(t)
        if t.num_rows == 0 or y.min() == y.max():
            raise CareloopError(f"the {name} split has {t.num_rows} labelled rows and {int(y.sum())} positives: "
                                "it needs both outcomes (more data, or other split fractions)")
    cands = fit_candidates(train_t, _y(train_t), train_t.column("patient_id").to_pylist(), calib_t, _y(calib_t),
                           columns=data.features, categorical=data.categorical, estimators=config.estimators,
                           calibration=config.calibration, seed=config.seed, threads=config.threads,
                           progress=step)
    model = cands.model
    y_cal, y_test = _y(calib_t), _y(test_t)
    clusters = test_t.column("patient_id").to_pylist()

    step("scoring the calibration and test splits")
    scores_cal = {f"careloop {k}": m.predict_proba(calib_t) for k, m in cands.models.items()}
    scores_test = {f"careloop {k}": m.predict_proba(test_t) for k, m in cands.models.items()}
    for col, label in data.comparators.items():  # published scores, mapped to risk on the calibration split
        raw_cal = calib_t.column(col).to_numpy(zero_copy_only=False).astype(float)
        raw_test = test_t.column(col).to_numpy(zero_copy_only=False).astype(float)
        ok = np.isfinite(raw_cal)
        cal = Calibrator("sigmoid").fit(raw_cal[ok], y_cal[ok])
        fill = float(np.nanmedian(raw_cal))
        scores_cal[label] = cal(np.where(np.isfinite(raw_cal), raw_cal, fill))
        scores_test[label] = cal(np.where(np.isfinite(raw_test), raw_test, fill))
    primary = f"careloop {cands.chosen}"
    order = [primary, *[k for k in scores_test if k != primary]]

    step("choosing the operating point on the calibration split")
    ops = {k: choose_operating_point(y_cal, scores_cal[k], policy=config.policy, target=config.target)
           for k in order}
    op = ops[primary]
    band = _threshold_band(y_cal, scores_cal[primary], calib_t.column("patient_id").to_pylist(), config)

    step(f"evaluating on the test split ({test_t.num_rows:,} stays, {config.n_boot} bootstrap resamples)")
    evals = {k: evaluate(y_test, scores_test[k], clusters=clusters, threshold=ops[k].threshold, n_boot=config.n_boot,
                         seed=config.seed, probabilistic=k.startswith("careloop"))
             for k in order}
    comparisons = compare(y_test, {k: scores_test[k] for k in order}, primary, clusters=clusters,
                          n_boot=config.n_boot, seed=config.seed)

    step("assessing fairness")
    groups = {a: test_t.column(c).to_pylist() for a, c in data.groups.items()}
    labels = {(a, v): display(a, v) for a, vals in groups.items() for v in set(vals) if v is not None}
    fair = fairness(y_test, scores_test[primary], groups, threshold=op.threshold, clusters=clusters,
                    min_group_size=config.min_group_size, tolerances=config.tolerances, labels=labels,
                    n_boot=config.n_boot, seed=config.seed)

    recording = _recording(data, train_t, test_t, groups, clusters, labels, config)
    team, policy = _team(data, calib_t, test_t, scores_cal[primary], scores_test[primary], config, step)
    step("explaining")
    if data.source["kind"] == "table":
        infos = column_infos_for_table(data.features, sorted(c.name for c in model.preprocessor.categorical))
    else:
        infos = column_infos(data.describe, data.units)
    sample = test_t if test_t.num_rows <= IMPORTANCE_SAMPLE else test_t.take(
        np.random.default_rng(config.seed).choice(test_t.num_rows, IMPORTANCE_SAMPLE, replace=False))
    contrib = model.contributions(sample)
    importance = global_importance(contrib, infos, columns=model.columns)
    top = np.argsort(-scores_test[primary], kind="stable")[:EXAMPLES]
    ex_rows = test_t.take(pa.array(top)).select(data.features)
    ex_reasons = reasons(model.contributions(ex_rows), ex_rows.to_pylist(), infos, top=3, columns=model.columns)
    examples = [{"risk": float(scores_test[primary][i]), "reasons": [r.to_dict() for r in rs]}
                for i, rs in zip(top, ex_reasons, strict=True)]

    label_of = {i.column: i.label for i in infos}
    report = {
        "schema": "careloop.validation-report/1", "kind": "model",
        "title": f"{config.name}: {data.source.get('task', data.source.get('label'))}",
        "created": created,
        "model": {"name": config.name, "bundle_id": None, "version": code_version(),
                  "task": data.source.get("task", data.source.get("label")),
                  "feature_set": data.source.get("feature_set", data.source.get("file")),
                  "estimator": cands.chosen,
                  "candidates": {f"careloop {k}": {"calibration_auroc": {"estimate": v, "ci": None}}
                                 for k, v in cands.calibration_auroc.items()},
                  "selection": cands.selection,
                  "calibration": {"method": config.calibration, "fitted_on": "calibration"},
                  "hyperparameters": model.estimator.hyperparameters, "seed": config.seed,
                  "code_version": code_version(),
                  "training_fingerprint": fingerprint(data), "n_features": len(data.features),
                  "features": data.features, "excluded_inputs": data.source.get("excluded_inputs", []),
                  "dropped_columns": data.excluded_columns},
        "data": {"source": _source_text(data), "split": data.source.get("split"), "label": data.source.get("label"),
                 "positive": data.source.get("positive"),
                 "splits": {s: _split_summary(t) for s, t in (("train", train_t), ("calibration", calib_t),
                                                              ("test", test_t))},
                 "excluded": data.steps, "censored": data.source.get("censored"),
                 "missingness": _missingness(data, train_t, test_t, label_of)},
        "primary": primary,
        "order": order,
        "scores": {k: evals[k].to_dict() for k in order},
        "comparisons": comparisons,
        "operating_point": {**op.to_dict(), "threshold_ci": band},
        "operating_points": {k: ops[k].to_dict() for k in order},
        "fairness": _with_recording(fair.to_dict(), recording),
        "importance": importance,
        "example_reasons": examples,
        "team": team,
    }

    monitor_reference = None
    if "index_time" in data.table.column_names:  # a task on an event store: what careloop monitor compares with
        step("summarising the training data for monitoring")
        monitor_reference = _monitor_reference(data, train_t, calib_t, scores_cal[primary], op.threshold)

    step("writing the bundle")
    registry.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=registry))
    try:
        model.save(staging)
        for fname, text in data.specs.items():
            (staging / fname).write_text(text)
        if config.documentation:
            (staging / "documentation.yaml").write_text(Path(config.documentation).read_text())
        _write_predictions(staging, data, calib_t, test_t, scores_cal, scores_test)
        if policy is not None:
            (staging / "deferral_policy.json").write_text(policy.to_json())
        if monitor_reference is not None:
            from careloop.monitor._reference import FILE

            (staging / FILE).write_text(json.dumps(monitor_reference, indent=1, allow_nan=False))
        if data.directory is not None:
            pq.write_table(data.directory, staging / "directory.parquet")
        write_reports(report, facts, staging)
        step("registering")
        meta = {"name": config.name, "created": report["created"], "task": report["model"]["task"],
                "source": data.source, "estimator": cands.chosen, "features": data.features,
                "categorical": sorted(data.categorical), "describe": data.describe, "units": data.units,
                "groups": data.groups, "operating_point": report["operating_point"],
                "input_ranges": _input_ranges(model, train_t),
                "metrics": {k: v["estimate"] for k, v in report["scores"][primary]["metrics"].items()
                            if isinstance(v, dict)},
                "code_version": report["model"]["code_version"],
                "training_fingerprint": report["model"]["training_fingerprint"],
                "scope": {"min_age": data.source.get("min_age")}, **_seeds(data, config)}
        (staging / "bundle.json").write_text(json.dumps(meta, indent=1, sort_keys=True, default=str))
        # the timings differ on every run: in the manifest, not in the content the bundle id is made of
        return Registry(registry).register(staging, config.name, run={"timings_s": timings})
    except BaseException:
        import shutil

        shutil.rmtree(staging, ignore_errors=True)
        raise


def _seeds(data: TrainingData, config: TrainConfig) -> dict:
    """The seeds that make the bundle reproducible: --seed (estimators, bootstrap, explanation sample) and the
    split's, which with --store is the task's own split.seed, not --seed (None for a --split-column)."""
    return {"seed": config.seed, "split_seed": (data.source.get("split") or {}).get("seed")}


DOCUMENTATION_KINDS = ("comorbidity",)  # columns computed from recorded diagnoses
DERIVED_KINDS = ("comorbidity", "score")  # never predictors of the recording check (LACE contains Charlson)


def _recording(data: TrainingData, train_t: pa.Table, test_t: pa.Table, groups: dict, clusters: list, labels: dict,
               config: TrainConfig) -> list:
    """Recording disparity of the documentation-derived columns (see careloop.evaluation._recording)."""
    from careloop.evaluation import recording_disparity
    from careloop.modeling import Preprocessor

    kinds = {d["column"]: d.get("kind") for d in data.describe}
    targets = [c for c in data.features if kinds.get(c) in DOCUMENTATION_KINDS]
    predictors = [c for c in data.features if kinds.get(c) not in DERIVED_KINDS]
    if not targets or not predictors or not groups:
        return []
    pre = Preprocessor.fit(train_t, predictors, categorical=data.categorical)
    x_train, _ = pre.design(train_t)
    x_test, _ = pre.design(test_t)

    def cols(t: pa.Table) -> dict:
        return {c: t.column(c).to_numpy(zero_copy_only=False).astype(float) for c in targets}

    return recording_disparity(x_train, cols(train_t), x_test, cols(test_t), groups, clusters=clusters,
                               labels=labels, min_group_size=config.min_group_size, n_boot=config.n_boot,
                               seed=config.seed)


def _with_recording(fair: dict, findings: list) -> dict:
    """The fairness block, with the recording check's findings and its flags among the others."""
    fair["recording"] = {"method": "ridge regression of each diagnosis-derived column on the stay's other data "
                                   "(training split); group mean standardised residual minus the overall mean on the "
                                   "test split; cluster bootstrap; Bonferroni over groups x columns",
                         "tolerance_sd": 0.25, "findings": [f.to_dict() for f in findings]}
    for f in findings:
        if f.flagged:
            fair["flags"].append({"attribute": f.attribute, "group": f.group, "metric": f"recorded {f.column}",
                                  "gap": f.gap.to_dict(), "tolerance": 0.25, "p_adjusted": f.p_adjusted,
                                  "message": f.message})
    return fair


def _clinician(data: TrainingData, t: pa.Table, config: TrainConfig) -> np.ndarray:
    from careloop.workflows._data import read_table

    c = read_table(Path(config.clinician), flag="--clinician")
    key = "encounter_id" if "encounter_id" in c.column_names else c.column_names[0]
    if config.clinician_column not in c.column_names:
        raise CareloopError(f"--clinician: no column {config.clinician_column!r} in {Path(config.clinician).name}")
    lookup = dict(zip(pc.cast(c.column(key), pa.string()).to_pylist(),
                      c.column(config.clinician_column).to_pylist(), strict=True))
    vals = [lookup.get(r) for r in t.column("row_id").to_pylist()]
    if any(v is None for v in vals):
        raise CareloopError(f"--clinician: {sum(v is None for v in vals)} stay(s) have no clinician estimate")
    return np.asarray(vals, dtype=float)


def _team(data: TrainingData, calib_t: pa.Table, test_t: pa.Table, p_cal: np.ndarray, p_test: np.ndarray,
          config: TrainConfig, step) -> tuple[dict | None, object]:
    """Clinician and AI as a team: a deferral policy tuned and chosen on the two halves of the calibration split
    (by patient), evaluated once on the test split."""
    if config.clinician is None:
        return None, None
    from careloop.deferral import fit_policy, team_evaluation

    step("learning when to defer to the clinician")
    c_cal, c_test = _clinician(data, calib_t, config), _clinician(data, test_t, config)
    y_cal, y_test = _y(calib_t), _y(test_t)
    half = np.asarray([int(h, 16) % 2 == 0 for h in pseudonym(calib_t.column("patient_id").to_pylist(), "half")])
    policy = fit_policy((p_cal[half], c_cal[half], y_cal[half]), (p_cal[~half], c_cal[~half], y_cal[~half]),
                        seed=config.seed, clinician_threshold="prevalence")
    team = team_evaluation(policy, p_test, c_test, y_test, clusters=test_t.column("patient_id").to_pylist(),
                           n_boot=config.n_boot, seed=config.seed)
    return team, policy


def _threshold_band(y: np.ndarray, p: np.ndarray, patients: list, config: TrainConfig, n_boot: int = 200) -> list:
    """The 95% interval of the operating threshold itself: the policy re-applied to bootstrap resamples of the
    calibration patients. The service treats a risk inside this band as too close to call (it says so, without
    a warning), so that which side of the line a patient falls is not left to chance."""
    from careloop.evaluation import EvaluationError, choose_operating_point

    rng = np.random.default_rng(config.seed)
    ids, codes = np.unique(np.asarray(patients, dtype=object).astype(str), return_inverse=True)
    thresholds = []
    for _ in range(n_boot):
        counts = rng.multinomial(len(ids), np.full(len(ids), 1 / len(ids)))[codes]
        idx = np.repeat(np.arange(len(y)), counts)
        try:
            thresholds.append(choose_operating_point(y[idx], p[idx], policy=config.policy,
                                                     target=config.target).threshold)
        except EvaluationError:
            continue
    if len(thresholds) < 20:
        return None
    lo, hi = np.percentile(thresholds, [2.5, 97.5])
    return [float(lo), float(hi)]


def _monitor_reference(data: TrainingData, train_t: pa.Table, calib_t: pa.Table, scores_cal: np.ndarray,
                       threshold: float | None) -> dict:
    """The monitoring reference (`careloop.monitor._reference`): histograms of the inputs on the training rows of
    the last 12 months, of the final model's risk on the calibration rows of the same months, and the pseudonyms
    of the stays used to develop the model."""
    from careloop.monitor._reference import column_labels, training_reference

    return training_reference(data.features, train_t, calib_t, scores_cal, threshold=threshold,
                              labels=column_labels(data.describe, data.units))


def _input_ranges(model, train_t: pa.Table) -> dict:
    """Training ranges (0.5th-99.5th percentiles) of the numeric inputs: the service's out-of-distribution check."""
    out = {}
    for c in model.preprocessor.numeric:
        x = train_t.column(c.name).to_numpy(zero_copy_only=False).astype(float)
        x = x[np.isfinite(x)]
        if len(x):
            lo, hi = np.percentile(x, [0.5, 99.5])
            out[c.name] = [float(lo), float(hi)]
    return out


def _source_text(data: TrainingData) -> str:
    s = data.source
    if s["kind"] == "store":
        return (f"Event store {s['store']}: task {s['task']} ({s['task_description']}), feature set "
                f"{s['feature_set']}" + (f", data up to {str(s['data_end'])[:10]} (--data-end)"
                                         if s.get("data_end_given") else ""))
    return f"Flat extract {s['file']} (one row per stay; patient id column {s['id']})"


def _write_predictions(folder: Path, data: TrainingData, calib_t: pa.Table, test_t: pa.Table,
                       scores_cal: dict, scores_test: dict) -> None:
    """Every score on the calibration and test rows, with labels, pseudonymous ids and groups: the report's
    numbers can be recomputed from this file alone."""
    parts = []
    for split, t, scores in (("calibration", calib_t, scores_cal), ("test", test_t, scores_test)):
        cols = {"row": pseudonym(t.column("row_id").to_pylist(), "row"),
                "cluster": pseudonym(t.column("patient_id").to_pylist(), "patient"),
                "split": [split] * t.num_rows, "label": _y(t)}
        for k, v in scores.items():
            cols[f"score:{k}"] = v
        for a, c in data.groups.items():
            cols[f"group:{a}"] = t.column(c)
        parts.append(pa.table(cols))
    pq.write_table(pa.concat_tables(parts), folder / PREDICTIONS, compression="zstd")
