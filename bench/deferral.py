"""Benchmark `careloop.deferral`: fitting one deferral policy, the full hyperparameter search, team evaluation.

Targets (issue 9): one policy with fixed hyperparameters fitted on 6,000 cases in well under a second; the full
search (CoDoC and the alternative learner over their default grids) on 6,000 tuning + 6,000 validation cases in
under a minute on 2 cores. The data are generated (a score whose AI is uninformative in a band where the clinician
is accurate), deterministically; each figure is the median of --repeats runs in this process, wall and CPU time,
after one warm-up run. The load average is printed: the machines are noisy.

    python bench/deferral.py                       # 6,000 + 6,000 cases, 6,000 test cases, 1,000 replicates
    python bench/deferral.py --tune 20000 --val 20000
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

from careloop.deferral import CoDoC, fit_policy, team_evaluation


def cases(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    s = rng.beta(1.2, 2.5, n)  # most cases low risk
    band = (s >= 0.3) & (s < 0.5)
    p = np.where(band, 0.35, 1 / (1 + np.exp(-9 * (s - 0.45))))
    y = rng.random(n) < p
    c = np.where(band, np.where(rng.random(n) < 0.92, y, ~y), (s + rng.normal(0, 0.25, n)) > 0.45)
    return s, c.astype(int), y.astype(int)


def timed(fn, repeats: int) -> tuple[float, float, object]:
    fn()  # warm-up (imports, caches)
    walls, cpus, out = [], [], None
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    return statistics.median(walls), statistics.median(cpus), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tune", type=int, default=6000)
    ap.add_argument("--val", type=int, default=6000)
    ap.add_argument("--test", type=int, default=6000)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    tune, val, test = cases(args.tune, 1), cases(args.val, 2), cases(args.test, 3)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"cores {cores}, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"data: tuning {args.tune:,} cases ({int(tune[2].sum()):,} positives), validation {args.val:,} "
          f"({int(val[2].sum()):,}), test {args.test:,} ({int(test[2].sum()):,})")

    fixed = dict(theta=0.45, lam=2.0, bins=20, bandwidth=0.05)
    wall, cpu, _ = timed(lambda: CoDoC(**fixed, n_boot=0).fit(*tune, *val), args.repeats)
    print(f"one CoDoC policy, fixed hyperparameters {fixed}, no validation intervals: "
          f"{wall * 1000:.0f} ms wall, {cpu * 1000:.0f} ms CPU")
    wall, cpu, model = timed(lambda: CoDoC(**fixed).fit(*tune, *val), args.repeats)
    print(f"the same with the policy's validation intervals (200 replicates): {wall * 1000:.0f} ms wall, "
          f"{cpu * 1000:.0f} ms CPU -> {model.policy_.learner}, intervals {list(model.policy_.intervals)}")

    wall, cpu, policy = timed(lambda: fit_policy(tune, val, seed=0), max(1, args.repeats - 1))
    sel = policy.selection
    sizes = ", ".join(f"{k} {v['candidates']}" for k, v in sel["learners"].items())
    print(f"full search, CoDoC + alternative, default grids ({sel['candidates']:,} configurations: {sizes}; "
          f"{sel['qualified']:,} qualified) on {args.tune:,} + {args.val:,} cases: {wall:.2f} s wall, {cpu:.2f} s CPU")
    print(f"  chosen: {policy.learner}, theta {policy.theta:.3f}, intervals {list(policy.intervals)}, "
          f"hyperparameters {policy.hyperparameters}")

    wall, cpu, ev = timed(lambda: team_evaluation(policy, *test, n_boot=args.n_boot, seed=0), 1)
    print(f"team evaluation on {args.test:,} test cases, {args.n_boot:,} paired replicates, "
          f"{len(ev['workload_curve'])} curve points: {wall:.2f} s wall, {cpu:.2f} s CPU")
    print(f"  {ev['summary']}")


if __name__ == "__main__":
    main()
