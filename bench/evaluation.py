"""Benchmark `careloop.evaluation`: the vectorised cluster bootstrap against the naive loop it replaces.

Target: `evaluate` on 20,000 stays of 5,000 patients with 1,000 bootstrap replicates in a few seconds on 2 cores,
with sane memory. Each measurement runs in its own process (data generated there, deterministically), and the
peak memory is the largest PSS of that process, sampled every 100 ms (`_memory.py`); the time is of the call
alone, wall and CPU (CPU time is the steadier figure on a busy machine; with 2 cores the wall time of an idle
machine is about half of it). The floor beside it is what the vectorisation replaces: a loop that materialises
each resample (np.repeat by the cluster counts) and calls scikit-learn / scipy for the same metrics; it runs
--naive-reps replicates and is extrapolated to --n-boot, and the ratio is printed. Machines are noisy: the load
average is printed too.

    python bench/evaluation.py                                  # 20,000 rows, 5,000 patients, 1,000 replicates
    python bench/evaluation.py --rows 100000 --clusters 25000   # a larger test split
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from _memory import run_sampled

CHILD = """
import json, sys, time
import numpy as np
what, n, k, n_boot, reps = sys.argv[1], *map(int, sys.argv[2:6])
rng = np.random.default_rng(0)
pid = rng.integers(0, k, n)
lp = -1.8 + rng.normal(0, 0.8, k)[pid] + rng.normal(0, 0.9, n)
p = 1 / (1 + np.exp(-lp))
y = rng.random(n) < 1 / (1 + np.exp(-(0.9 * lp + 0.2)))
race = rng.choice(["White", "Black", "Asian", "Other", None], n, p=[0.6, 0.2, 0.1, 0.07, 0.03])
sex = rng.choice(["F", "M"], n)
from careloop.evaluation import compare, evaluate, fairness
t0, c0 = time.perf_counter(), time.process_time()
if what == "evaluate":
    evaluate(y, p, clusters=pid, threshold=0.2, n_boot=n_boot)
elif what == "compare":
    lace = np.round(19 * p + rng.normal(0, 2, n))
    compare(y, {"model": p, "lace": lace, "noisy": p + rng.normal(0, 0.1, n)}, "model", clusters=pid, n_boot=n_boot)
elif what == "fairness":
    fairness(y, p, {"race": race, "sex": sex}, threshold=0.2, clusters=pid, n_boot=n_boot)
else:  # the naive floor: materialise each resample and call scikit-learn / scipy
    from scipy.optimize import brentq
    from scipy.special import expit
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score
    x = np.log(np.clip(p, 1e-6, 1 - 1e-6) / (1 - np.clip(p, 1e-6, 1 - 1e-6)))
    ids, codes = np.unique(pid, return_inverse=True)
    gen = np.random.default_rng(0)
    table, dc = np.arange(1, 11) / 20, np.arange(1, 51) / 100
    for _ in range(reps):
        counts = np.bincount(gen.integers(0, ids.size, ids.size), minlength=ids.size)
        i = np.repeat(np.arange(n), counts[codes])
        yy, pp, xx = y[i], p[i], x[i]
        roc_auc_score(yy, pp); average_precision_score(yy, pp); brier_score_loss(yy, pp); yy.sum() / pp.sum()
        LogisticRegression(C=np.inf, solver="newton-cholesky").fit(xx[:, None], yy)
        brentq(lambda a: np.sum(yy - expit(a + xx)), -30, 30)
        for t in np.concatenate([table, dc]):
            f = pp >= t
            tp, fp = (f & yy).sum(), (f & ~yy).sum()
print(json.dumps({"wall": time.perf_counter() - t0, "cpu": time.process_time() - c0}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--clusters", type=int, default=5_000)
    ap.add_argument("--n-boot", type=int, default=1_000)
    ap.add_argument("--naive-reps", type=int, default=20, help="replicates the naive loop runs (then extrapolated)")
    args = ap.parse_args()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"rows={args.rows:,} clusters={args.clusters:,} n_boot={args.n_boot:,} cores={os.cpu_count()} "
          f"load={load:.2f}")
    size = [str(v) for v in (args.rows, args.clusters, args.n_boot, args.naive_reps)]
    results: dict[str, dict[str, float]] = {}
    for what in ("evaluate", "compare", "fairness", "naive"):
        out, _, peak = run_sampled([sys.executable, "-c", CHILD, what, *size], what)
        scale = args.n_boot / args.naive_reps if what == "naive" else 1.0
        results[what] = {"seconds": out["wall"] * scale, "cpu_seconds": out["cpu"] * scale, "peak_pss_mb": peak / 2**20}
        note = ""
        if what == "naive":
            # wall, not CPU: scikit-learn's BLAS threads spin and inflate its CPU time
            note = (f"  ({args.naive_reps} replicates in {out['wall']:.2f} s, extrapolated; evaluate is "
                    f"{results[what]['seconds'] / results['evaluate']['seconds']:.0f}x faster)")
        print(f"{what:9s} n={args.rows:,} n_boot={args.n_boot:,} seconds={results[what]['seconds']:.2f} "
              f"cpu_seconds={results[what]['cpu_seconds']:.2f} peak_pss_mb={peak / 2**20:.0f}{note}")
    print(json.dumps({"rows": args.rows, "clusters": args.clusters, "n_boot": args.n_boot, "load": load,
                      "results": {k: {m: round(v, 3) for m, v in r.items()} for k, r in results.items()}}))


if __name__ == "__main__":
    main()
