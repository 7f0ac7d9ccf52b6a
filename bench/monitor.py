"""Benchmark `careloop monitor` and measure the issue's bars: speed, detection delay, false-alarm rate.

Timing (the default): a 100,000-patient synthetic hospital (2019-2025) with the `drift` scenario from 2024-01-01
(creatinine assay reads x1.12 + 0.05, diagnoses recoded, older new patients) is made, ingested and given a model
trained by `careloop train` on the readmission task split by time at 2024-01-01 (everything is built once under
bench-out/monitor/ and reused). Monitoring 2024 by month is then timed end to end as a subprocess (cohort,
point-in-time features of the reference and of the year's stays, scoring, PSI and tests, bootstrap performance and
fairness per month, the JSON and the HTML report), with its peak memory (PSS of the process tree). Bar: at most
2 minutes. It also says in which month the creatinine alert first appears (onset: January).

False alarms and detection (`--seeds N`): for each of N seeds, a hospital of `--patients` patients (default
10,000, the default 2019-2025 window) without drift, and one from the same seed with drift (onset 2023-01-01, two
thirds into the window); a model trained before 2023-01-01 (logistic, to keep the run short); both monitored by
quarter over 2023-2024 (8 periods). `--split time` (the default): the readmission task split by time at 2023-01-01;
`--split patient`: the repository's task as it is (split by patient) trained by `careloop train --data-end
2023-01-01`. Every alert in a hospital without drift is a false alarm; the detection delay is the number of full
periods after onset before a creatinine alert. Bar: at most one false alarm over 10 seeds, and the alert in the
first full period after onset.

Every bundle carries the training reference `careloop train` stores (`monitor_reference.json`); a bundle found
under bench-out/ without one (made by an earlier careloop) is trained again.

    python bench/monitor.py                      # the 100,000-patient timing run
    python bench/monitor.py --clean              # the same without drift: every alert is a false alarm
    python bench/monitor.py --seeds 10           # false-alarm rate and detection delay over 10 seeds
    python bench/monitor.py --seeds 10 --split patient
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from _memory import PeakSampler

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench-out" / "monitor"
CLI = [sys.executable, "-m", "careloop.cli"]
RUN = """
import json, sys
from pathlib import Path
from careloop.monitor.cli import run_monitor
s = run_monitor(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4], None, None,
                start=sys.argv[5], end=sys.argv[6])
print(json.dumps(s))
"""


def run(cmd: list[str], *, quiet: bool = False) -> tuple[float, int, str]:
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    with PeakSampler(proc.pid) as sampler:
        out, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, cmd[:5]))} failed ({proc.returncode}): {err[-2000:]}")
    if not quiet:
        print(f"  {time.perf_counter() - t0:.1f} s: {' '.join(map(str, cmd[3:5]))}", flush=True)
    return time.perf_counter() - t0, sampler.peak, out


def time_split_task(folder: Path, test_from: str) -> Path:
    text = (ROOT / "tasks" / "readmission-30d.yaml").read_text()
    text = text.replace("  by: patient\n", f"  by: time\n  test_from: {test_from}\n")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "readmission-30d.yaml").write_text(text)
    return folder / "readmission-30d.yaml"


def build(root: Path, patients: int, seed: int, drift: str | None, split: str, estimators: tuple[str, ...],
          n_boot: int, by: str = "time") -> tuple[Path, Path]:
    """(store, bundle) of one synthetic hospital, made once under `root` and reused. `by`: "time" trains the task
    split by time at `split`; "patient" trains the repository's task (split by patient) on the data up to `split`."""
    hospital, store = root / "hospital", root / "store"
    registry = root / ("registry" if by == "time" else "registry-patient")
    if not (hospital / "truth").is_dir():
        run([*CLI, "synth", "--patients", str(patients), "--seed", str(seed), "--workers", "2", "--out",
             str(hospital), "--overwrite", "--json", *(["--drift", "--drift-date", drift] if drift else [])])
    if not (store / "events").is_dir():
        run([*CLI, "ingest", str(hospital / "ndjson"), "--store", str(store), "--json"])
    bundles = sorted((b for b in registry.glob("readmission-30d-*") if (b / "monitor_reference.json").is_file()),
                     key=lambda b: b.stat().st_mtime)
    if not bundles:
        if by == "time":
            task, cut = str(time_split_task(root / "tasks", split)), []
        else:
            task, cut = "readmission-30d", ["--data-end", split]
        est = [a for e in estimators for a in ("--estimator", e)]
        _, _, out = run([*CLI, "train", "--task", task, "--store", str(store), "--registry", str(registry),
                         "--n-boot", str(n_boot), *est, *cut, "--json"])
        bundles = [Path(out.strip().splitlines()[-1])]
    return store, bundles[-1]


def monitor(bundle: Path, store: Path, out: Path, period: str, start: str, end: str) -> tuple[float, int, dict]:
    if out.exists():
        shutil.rmtree(out)  # no reference rebuilt by an earlier run: the timed run reads the bundle's own
    secs, peak, text = run([sys.executable, "-c", RUN, str(bundle), str(store), str(out), period, start, end],
                           quiet=True)
    return secs, peak, json.loads(text.strip().splitlines()[-1])


def creatinine_delay(report: dict, onset: str) -> int | None:
    """Full periods after onset before the first creatinine alert (0: in the first full period), None if never."""
    after = [p for p in report["periods"] if p["start"] >= onset]
    for i, p in enumerate(after):
        if any(str(a.get("feature", "")).startswith("creatinine_") for a in p["alerts"]):
            return i
    return None


def timing(args: argparse.Namespace) -> dict:
    onset = "2024-01-01"
    drift = None if args.clean else onset
    root = OUT / f"hospital-{args.patients}-{'clean' if args.clean else 'drift'}"
    what = "without drift" if args.clean else f"with drift from {onset}"
    print(f"building (once) a {args.patients:,}-patient hospital {what} and its model ...", flush=True)
    store, bundle = build(root, args.patients, 1, drift, onset, ("lightgbm", "logistic"), 200)
    print(f"monitoring 2024 by month: {bundle.name} on {store}", flush=True)
    run_dir = OUT / f"run-{args.patients}-{'clean' if args.clean else 'drift'}"
    secs, peak, summary = monitor(bundle, store, run_dir, "month", "2024-01-01", "2025-01-01")
    report = json.loads((run_dir / "monitor.json").read_text())
    delay = None if args.clean else creatinine_delay(report, onset)
    first = report["periods"][0]
    alerts = [(p["label"], a["kind"], a.get("feature") or a.get("group"), a["metric"], round(a["value"], 3))
              for p in report["periods"] for a in p["alerts"]]
    res = {"patients": args.patients, "drift": drift, "periods": summary["periods"], "stays": summary["stays"],
           "reference_rows": report["reference"]["rows"], "seconds": round(secs, 1),
           "monitor_seconds": report["timings_s"], "peak_pss_gb": round(peak / 1e9, 2), "alerts": summary["alerts"],
           "by_kind": summary["by_kind"], "tests": report["tests"]["count"],
           "first_month_alerts": [(a["kind"], a.get("feature") or a.get("group"), a["metric"], round(a["value"], 3))
                                  for a in first["alerts"]],
           "all_alerts": alerts, "creatinine_delay_periods": delay, "bar_seconds": 120,
           "ok": secs <= 120 and (not alerts if args.clean else delay == 0)}
    print(f"monitoring a year ({res['periods']} months, {res['stays']:,} index stays, reference of "
          f"{res['reference_rows']:,} training stays) of a {args.patients:,}-patient hospital {what}: {secs:.1f} s end "
          f"to end (bar: 120 s), peak PSS {res['peak_pss_gb']} GB; phases {report['timings_s']}")
    print(f"alerts: {summary['alerts']} {summary['by_kind']} over {res['tests']:,} tests")
    if args.clean:
        print(f"false alarms (every alert, the hospital has no drift): {alerts}")
    else:
        print(f"January (first full month after onset): {res['first_month_alerts']}; creatinine detection delay: "
              f"{delay} periods; alerts not naming creatinine: "
              f"{[a for a in alerts if not str(a[2]).startswith('creatinine_')]}")
    return res


def seeds(args: argparse.Namespace) -> dict:
    split = onset = "2023-01-01"
    rows = []
    for seed in range(1, args.seeds + 1):
        row: dict = {"seed": seed}
        for drift in (False, True):
            root = OUT / f"seeds-{args.patients}" / f"seed{seed}-{'drift' if drift else 'clean'}"
            store, bundle = build(root, args.patients, seed, onset if drift else None, split, ("logistic",), 200,
                                  by=args.split)
            run_dir = root / ("monitor" if args.split == "time" else "monitor-patient")
            secs, _, _ = monitor(bundle, store, run_dir, args.period, "2023-01-01", "2025-01-01")
            report = json.loads((run_dir / "monitor.json").read_text())
            alerts = [{"period": p["start"], "kind": a["kind"], "concerns": a.get("feature") or a.get("group"),
                       "metric": a["metric"], "severity": a["severity"]} for p in report["periods"]
                      for a in p["alerts"]]
            key = "drift" if drift else "clean"
            row[key] = {"periods": len(report["periods"]), "tested": sum(p["tested"] for p in report["periods"]),
                        "stays_per_period": round(sum(p["stays"] for p in report["periods"]) / len(report["periods"])),
                        "tests": report["tests"]["count"], "alerts": alerts, "seconds": round(secs, 1)}
            if drift:
                row[key]["delay"] = creatinine_delay(report, onset)
                row[key]["other_alerts"] = [a for a in alerts if not str(a["concerns"]).startswith("creatinine_")]
        rows.append(row)
        print(f"seed {seed}: without drift {len(row['clean']['alerts'])} alert(s) {row['clean']['alerts']}; with "
              f"drift, creatinine alert after {row['drift']['delay']} full period(s); other alerts "
              f"{[(a['period'], a['concerns'], a['metric']) for a in row['drift']['other_alerts']]}", flush=True)
    false_alarms = sum(len(r["clean"]["alerts"]) for r in rows)
    periods = sum(r["clean"]["tested"] for r in rows)
    delays = [r["drift"]["delay"] for r in rows]
    res = {"patients": args.patients, "period": args.period, "split": args.split, "seeds": args.seeds,
           "false_alarms": false_alarms,
           "clean_periods_tested": periods, "false_alarms_per_period": false_alarms / max(periods, 1),
           "runs_with_a_false_alarm": sum(bool(r["clean"]["alerts"]) for r in rows),
           "detection_delays": delays, "detected_in_first_period": sum(d == 0 for d in delays),
           "rows": rows, "ok": false_alarms <= 1 and all(d == 0 for d in delays)}
    print(f"\n{args.seeds} hospitals of {args.patients:,} patients (models split by {args.split}, trained before "
          f"2023), monitored by {args.period} over 2023-2024: "
          f"{false_alarms} false alarm(s) in {periods} tested periods without drift "
          f"({res['runs_with_a_false_alarm']} of {args.seeds} reports with any); creatinine detected in the first full "
          f"period after onset in {res['detected_in_first_period']} of {args.seeds} (delays in periods: {delays})")
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=0, help="false-alarm / detection runs over this many seeds")
    ap.add_argument("--patients", type=int, default=None, help="hospital size (100,000 timing; 10,000 seeds)")
    ap.add_argument("--period", default="quarter", help="period of the seed runs")
    ap.add_argument("--clean", action="store_true", help="time a hospital without drift (its alerts are false alarms)")
    ap.add_argument("--split", choices=("time", "patient"), default="time",
                    help="seed runs: the task split by time at onset, or by patient trained with --data-end onset")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    if args.seeds:
        args.patients = args.patients or 10_000
        res = seeds(args)
        name = f"seeds-{args.patients}-{args.seeds}{'' if args.split == 'time' else '-patient'}.json"
    else:
        args.patients = args.patients or 100_000
        res = timing(args)
        name = f"timing-{args.patients}-{'clean' if args.clean else 'drift'}.json"
    (OUT / name).write_text(json.dumps(res, indent=1, default=str))
    print(f"results: {OUT / name}")
    if not res["ok"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
