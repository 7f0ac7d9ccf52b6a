"""Benchmark `careloop train` on 100,000 index stays and check the issue's bars on the same run.

The store is the 200,000-patient synthetic hospital of bench/features.py (about 100,000 readmission-30d stays),
made once under bench-out/ and reused; `--bias` uses a second hospital from the same seed with the `bias`
scenario (a subgroup's chronic conditions under-recorded). The run is the real command, as a subprocess:
cohort, point-in-time features, LightGBM + logistic, calibration, the operating point, the bootstrap evaluation
(1,000 resamples) of four scores, fairness over seven attributes, SHAP reasons, the reports and the bundle. Peak
memory is the PSS of the process tree, sampled every 100 ms.

Bars (issue 5): test AUROC >= 95% of the generator's true risk on the same test stays; calibration slope in
0.9-1.1; beats LACE and HOSPITAL with non-overlapping 95% intervals; no fairness flag without bias, the biased
group flagged with it; at most 3 minutes.

    python bench/train.py                 # the unbiased hospital, then the biased one
    python bench/train.py --skip-bias
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
from sklearn.metrics import roc_auc_score

from _memory import PeakSampler

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench-out" / "train"
CLI = [sys.executable, "-m", "careloop.cli"]
PATIENTS = 200_000


def run(cmd: list[str]) -> tuple[float, int, str]:
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    with PeakSampler(proc.pid) as sampler:
        out, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[3:5])} failed ({proc.returncode}): {err[-2000:]}")
    return time.perf_counter() - t0, sampler.peak, out


def build(hospital: Path, store: Path, bias: bool) -> None:
    if not (hospital / "truth").is_dir():
        print(f"synthesising {PATIENTS:,} patients into {hospital} ...", flush=True)
        run([*CLI, "synth", "--patients", str(PATIENTS), "--seed", "1", "--workers", "2", "--out", str(hospital),
             "--overwrite", "--json", *(["--scenario", "bias"] if bias else [])])
    if not (store / "events").is_dir():
        print(f"ingesting into {store} ...", flush=True)
        run([*CLI, "ingest", str(hospital / "ndjson"), "--store", str(store), "--json"])


def bars(bundle: Path, truth: Path) -> dict:
    """The issue's bars, recomputed from the bundle's stored test predictions and the generator's truth."""
    from careloop.workflows.train import pseudonym

    rep = json.loads((bundle / "report.json").read_text())
    preds = pq.read_table(bundle / "predictions.parquet")
    test = preds.filter(pc.equal(preds.column("split"), "test"))
    y = test.column("label").to_numpy().astype(int)
    t = pq.read_table(truth).select(["encounter_id", "true_risk_30d"])
    key = dict(zip(pseudonym(t.column("encounter_id").to_pylist(), "row"), t.column("true_risk_30d").to_pylist(),
                   strict=True))
    true_auc = roc_auc_score(y, [key[r] for r in test.column("row").to_pylist()])
    prim = rep["primary"]
    m = rep["scores"][prim]["metrics"]
    auc, slope = m["auroc"], m["calibration_slope"]
    out = {"test_stays": len(y), "positives": int(y.sum()), "primary": prim,
           "auroc": auc, "true_risk_auroc": true_auc, "ratio_to_truth": auc["estimate"] / true_auc,
           "calibration_slope": slope, "beats": {}, "flags": rep["fairness"]["flags"]}
    for c in rep["comparisons"]:
        if c["reference"].startswith("careloop"):
            continue
        ref = rep["scores"][c["reference"]]["metrics"]["auroc"]
        out["beats"][c["reference"]] = {"auroc": ref, "difference": c["difference"],
                                        "non_overlapping": auc["ci"][0] > ref["ci"][1]}
    return out


def show(name: str, wall: float, peak: int, b: dict, timings: dict) -> None:
    ci = lambda e: f"{e['estimate']:.3f} ({e['ci'][0]:.3f}-{e['ci'][1]:.3f})"  # noqa: E731
    print(f"\n== {name}: {b['test_stays']:,} test stays ({b['positives']:,} readmitted)")
    print(f"careloop train: {wall:.1f} s wall, peak PSS {peak / 1e9:.2f} GB (bar: <= 180 s)")
    print("  phases: " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items() if v >= 0.05))
    print(f"  primary {b['primary']}: AUROC {ci(b['auroc'])}, true risk {b['true_risk_auroc']:.3f}, "
          f"ratio {b['ratio_to_truth']:.3f} (bar >= 0.95)")
    print(f"  calibration slope {ci(b['calibration_slope'])} (bar 0.9-1.1)")
    for ref, v in b["beats"].items():
        print(f"  vs {ref}: AUROC {ci(v['auroc'])}, difference {ci(v['difference'])}, "
              f"intervals {'do not overlap' if v['non_overlapping'] else 'OVERLAP'}")
    print(f"  fairness flags: {len(b['flags'])}")
    for f in b["flags"]:
        print(f"    - {f['message']}")


def one(name: str, hospital: Path, store: Path, bias: bool, n_boot: int) -> dict:
    build(hospital, store, bias)
    reg = OUT / f"registry-{name}"
    wall, peak, stdout = run([*CLI, "train", "--task", "readmission-30d", "--store", str(store), "--registry",
                              str(reg), "--n-boot", str(n_boot), "--json"])
    bundle = Path(stdout.strip().splitlines()[-1])
    timings = json.loads((bundle / "bundle.json").read_text()).get("timings_s", {})
    b = bars(bundle, hospital / "truth" / "stays.parquet")
    show(name, wall, peak, b, timings)
    return {"wall_s": wall, "peak_pss_bytes": peak, "bundle": str(bundle), **b}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skip-bias", action="store_true")
    ap.add_argument("--n-boot", type=int, default=1000)
    a = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    feats = ROOT / "bench-out" / "features"
    results = {"unbiased": one("unbiased", feats / f"hospital-{PATIENTS}", feats / f"store-{PATIENTS}", False,
                               a.n_boot)}
    if not a.skip_bias:
        results["bias"] = one("bias", OUT / f"hospital-{PATIENTS}-bias", OUT / f"store-{PATIENTS}-bias", True,
                              a.n_boot)
    (OUT / "results.json").write_text(json.dumps(results, indent=1, default=float))
    print(f"\nresults: {OUT / 'results.json'}")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
