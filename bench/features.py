"""Benchmark point-in-time feature extraction (`careloop.features.engine.extract`) against meds-tab, on the same events.

Target (issue): 100,000 index stays on 2 cores, faster than meds-tab. The store is a synthetic hospital big enough
to give 100,000 real index stays of the `readmission-30d` task (about 0.5 per patient, so 200,000 patients),
made once under bench-out/features/ and reused. careloop extracts the `readmission` feature set (DuckDB, 2 threads)
for the first 100,000 stays. meds-tab 0.1 (0.2.0 writes empty matrices, see ../shared/PERFORMANCE.md) runs from its
own venv, through its documented pipeline (describe, tabularize-static, tabularize-time-series with 2 hydra joblib
workers, cache-task), with windows 1d/30d/365d/full and aggs code/count, value/count/sum/min/max. It loops in Python
over every event time, so it runs on the first --medstab-rows stays only: all events of their subjects exported as
a MEDS dataset (data/train/<shard>.parquet sorted by subject_id, time; labels at the same index times), and careloop
is timed again on exactly those rows for the ratio. Each tool runs as a subprocess; peak memory is the largest PSS of
its process tree (shared pages counted once), sampled every 100 ms.
Correctness: careloop's sodium/potassium min/max of the stay, and meds-tab's
full-history count and max of sodium and creatinine, are checked row by row against independent DuckDB queries.

    python bench/features.py                      # 200k patients, 100k stays; meds-tab on the first 1,000
    python bench/features.py --patients 20000 --rows 10000 --skip-medstab
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from _memory import PeakSampler

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench-out" / "features"
CLI = [sys.executable, "-m", "careloop.cli"]
WINDOWS = ["1d", "30d", "365d", "full"]
AGGS = ["code/count", "value/count", "value/sum", "value/min", "value/max"]
CHILD = """
import json, sys, time
import pyarrow.parquet as pq
from careloop.engines import DuckDBEngine
from careloop.features.engine import extract
from careloop.features.spec import load_feature_set
store, cohort_fp, out_fp, threads = sys.argv[1:5]
cohort = pq.read_table(cohort_fp)
t0 = time.perf_counter()
eng = DuckDBEngine(store, threads=int(threads))
eng.con.execute("SET enable_progress_bar = false")  # it would print to our stdout
res = extract(load_feature_set("readmission"), cohort, eng)
wall = time.perf_counter() - t0
pq.write_table(res.table, out_fp)
print(json.dumps({"wall": wall, "rows": res.table.num_rows, "columns": res.table.num_columns}))
"""


def run(cmd: list[str], log: Path | None = None) -> tuple[float, int, str]:
    """Run `cmd`; (wall s, peak PSS of its process tree, stdout). Raises with the log's tail on failure."""
    t0 = time.perf_counter()
    err = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, cwd=ROOT)
    with PeakSampler(proc.pid) as sampler:
        stdout, _ = proc.communicate()
    wall = time.perf_counter() - t0
    peak = sampler.peak
    if log:
        err.close()
    if proc.returncode != 0:
        tail = log.read_text()[-1500:] if log else ""
        raise RuntimeError(f"{' '.join(cmd[:3])} ... exited {proc.returncode}\n{tail}")
    return wall, peak, stdout


def build_store(patients: int) -> Path:
    hospital, store = OUT / f"hospital-{patients}", OUT / f"store-{patients}"
    if not (hospital / "ndjson").is_dir():
        print(f"synthesising {patients:,} patients into {hospital} ...", flush=True)
        run([*CLI, "synth", "--patients", str(patients), "--seed", "1", "--out", str(hospital), "--overwrite",
             "--json"])
    if not (store / "events").is_dir():
        print(f"ingesting into {store} ...", flush=True)
        run([*CLI, "ingest", str(hospital / "ndjson"), "--store", str(store), "--json"])
    return store


def export_meds(con, cohort_fp: Path, meds: Path, shard_subjects: int) -> int:
    """All events of the cohort's subjects as a MEDS dataset (data/train/<shard>.parquet), labels at its index times."""
    shutil.rmtree(meds, ignore_errors=True)
    (meds / "data" / "train").mkdir(parents=True)
    (meds / "labels" / "train").mkdir(parents=True)
    con.execute(f"""CREATE OR REPLACE TEMP TABLE shard_of AS SELECT subject_id,
        (dense_rank() OVER (ORDER BY subject_id) - 1) // {shard_subjects} AS shard
        FROM (SELECT DISTINCT subject_id FROM read_parquet('{cohort_fp}'))""")
    n = con.execute("SELECT max(shard) + 1 FROM shard_of").fetchall()[0][0]
    for i in range(n):
        con.execute(f"""COPY (SELECT e.subject_id, timezone('UTC', e.time) AS time, e.code,
              CAST(e.numeric_value AS FLOAT) AS numeric_value
            FROM events e JOIN shard_of s USING (subject_id) WHERE s.shard = {i}
            ORDER BY e.subject_id, e.time NULLS FIRST) TO '{meds}/data/train/{i}.parquet' (FORMAT parquet)""")
        con.execute(f"""COPY (SELECT c.subject_id, timezone('UTC', c.index_time) AS prediction_time,
              coalesce(c.label, false) AS boolean_value
            FROM read_parquet('{cohort_fp}') c JOIN shard_of s USING (subject_id) WHERE s.shard = {i}
            ORDER BY c.subject_id, c.index_time) TO '{meds}/labels/train/{i}.parquet' (FORMAT parquet)""")
    return n


def run_medstab(venv: Path, meds: Path, workers: int) -> tuple[float, int, list[tuple[str, float]]]:
    """meds-tab's documented pipeline: describe, tabularise at every event time, then cache the label rows."""
    out = meds / "tab"
    shutil.rmtree(out, ignore_errors=True)
    common = [f"input_dir={meds}/data", f"output_dir={out}", "tabularization.min_code_inclusion_count=10",
              f"tabularization.window_sizes=[{','.join(WINDOWS)}]",
              f"tabularization.aggs=[static/present,{','.join(AGGS)}]"]
    stages = [("describe", ["meds-tab-describe", f"input_dir={meds}/data", f"output_dir={out}"]),
              ("static", ["meds-tab-tabularize-static", *common]),
              ("time-series", ["meds-tab-tabularize-time-series", "--multirun", f"worker=range(0,{workers})",
                               "hydra/launcher=joblib", *common]),
              ("cache-task", ["meds-tab-cache-task", *common, f"input_label_dir={meds}/labels", "task_name=task"])]
    wall, peak, steps = 0.0, 0, []
    for name, cmd in stages:
        w, p, _ = run([str(venv / "bin" / cmd[0]), *cmd[1:]], log=meds / f"medstab-{name}.log")
        wall, peak = wall + w, max(peak, p)
        steps.append((name, w))
    return wall, peak, steps


def medstab_matrix(meds: Path, shards: int, window: str, agg: str) -> tuple[list[str], np.ndarray]:
    """Dense (label rows x features) of one meds-tab output, shards in order, and the feature codes."""
    codes = sorted(pq.read_table(meds / "tab" / "metadata" / "codes.parquet").column("code").to_pylist())
    suffix = "/code" if agg.startswith("code/") else "/value"
    feats = [c.removesuffix(suffix) for c in codes if c.endswith(suffix)]
    blocks = []
    for i in range(shards):
        z = np.load(meds / "tab" / "task" / "task_cache" / "train" / str(i) / window / f"{agg}.npz")
        (data, row, col), shape = z["array"], z["shape"]
        m = np.zeros(tuple(shape))
        m[row.astype(np.int64), col.astype(np.int64)] = data
        blocks.append(m)
    return feats, np.vstack(blocks)


def compare(got: np.ndarray, want: np.ndarray) -> int:
    """Rows where two columns disagree (NULL and 0 are the same for meds-tab's sparse zeros)."""
    return int(np.sum(~np.isclose(got, want, rtol=1e-4, atol=1e-4, equal_nan=True)))


def check_careloop(con, cohort_fp: Path, feats_fp: Path) -> str:
    bad, n = 0, 0
    for code, col in (("LOINC/2951-2", "sodium"), ("LOINC/2823-3", "potassium")):
        t = con.execute(f"""SELECT f.{col}_min AS gmin, f.{col}_max AS gmax, min(e.numeric_value) AS wmin,
              max(e.numeric_value) AS wmax
            FROM read_parquet('{cohort_fp}') c JOIN read_parquet('{feats_fp}') f USING (encounter_id)
            LEFT JOIN events e ON e.subject_id = c.subject_id AND e.code = '{code}' AND e.numeric_value IS NOT NULL
              AND e.time >= c.admit_time AND e.time <= c.index_time
            GROUP BY c.encounter_id, f.{col}_min, f.{col}_max""").fetchnumpy()
        for g, w in (("gmin", "wmin"), ("gmax", "wmax")):
            gv, wv = (np.asarray(np.ma.filled(t[k].astype(float), np.nan)) for k in (g, w))
            bad += int(np.sum(~np.isclose(gv, wv, equal_nan=True)))
            n += len(gv)
    return f"{'OK' if bad == 0 else 'FAIL'}: {n - bad:,}/{n:,} values equal (sodium, potassium min/max of the stay)"


def check_medstab(con, meds: Path, shards: int) -> str:
    # the label rows meds-tab kept, in the order of its matrices (shard by shard, file order)
    labels = con.sql(f"SELECT subject_id, time AS prediction_time FROM read_parquet('{meds}/tab/task/labels/"
                     "train/*.parquet', filename = true, file_row_number = true) ORDER BY "
                     "CAST(regexp_extract(filename, '(\\d+)\\.parquet$', 1) AS INT), file_row_number").to_arrow_table()
    con.register("lab", labels.append_column("rn", [np.arange(labels.num_rows)]))
    nnz = {(w, a): np.count_nonzero(medstab_matrix(meds, shards, w, a)[1]) for w in WINDOWS for a in AGGS}
    empty = sorted({a for (_, a), v in nnz.items() if v == 0})
    parts, ok = [], not empty
    for agg, col in (("code/count", "cnt"), ("value/max", "mx")):
        bad, n = 0, 0
        feats, m = medstab_matrix(meds, shards, "full", agg)
        for code in ("LOINC/2951-2", "LOINC/2160-0"):
            want = con.execute(f"""SELECT count(e.code) AS cnt, max(e.numeric_value) AS mx FROM lab l
                LEFT JOIN events e ON e.subject_id = l.subject_id AND e.code = '{code}' AND e.time IS NOT NULL
                  AND timezone('UTC', e.time) <= l.prediction_time
                GROUP BY l.rn ORDER BY l.rn""").fetchnumpy()[col]
            w = np.nan_to_num(np.ma.filled(want.astype(float), np.nan))
            bad += compare(m[:, feats.index(code)], w)
            n += len(w)
        ok = ok and bad == 0
        parts.append(f"full/{agg} {n - bad:,}/{n:,} equal")
    return (f"{'OK' if ok else 'FAIL'}: sodium+creatinine vs DuckDB: {'; '.join(parts)}; "
            f"{len(nnz) - len(empty) * len(WINDOWS)}/{len(nnz)} time-series matrices non-empty"
            + (f" (all-zero in every window: {', '.join(empty)})" if empty else ""))

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--patients", type=int, default=200_000)
    ap.add_argument("--rows", type=int, default=100_000, help="index stays (the first N of readmission-30d)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--medstab-venv", type=Path, default=ROOT / "bench-out" / "medstab-venv",
                    help="a venv with `pip install meds-tab==0.1` (kept apart from careloop's)")
    ap.add_argument("--shard-subjects", type=int, default=20_000, help="subjects per MEDS shard")
    ap.add_argument("--medstab-rows", type=int, default=1_000,
                    help="meds-tab (and careloop again) on the first N index stays: meds-tab 0.1 tabularises every "
                         "event time in a Python loop, hours at 100k stays")
    ap.add_argument("--skip-medstab", action="store_true")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    store = build_store(args.patients)

    import duckdb

    from careloop.engines import DuckDBEngine
    from careloop.tasks.cohort import build_cohort
    from careloop.tasks.spec import load_task

    eng = DuckDBEngine(store, threads=args.threads)
    cohort = build_cohort(load_task("readmission-30d"), eng).table
    if cohort.num_rows < args.rows:
        print(f"note: only {cohort.num_rows:,} index stays in the task; using them all (asked {args.rows:,})")
    cohort = cohort.slice(0, args.rows)
    cohort_fp, feats_fp, meds = OUT / "cohort.parquet", OUT / "careloop-features.parquet", OUT / "meds"
    pq.write_table(cohort, cohort_fp)
    con: duckdb.DuckDBPyConnection = eng.con
    n_events, n_codes = con.execute("SELECT count(*), count(DISTINCT code) FROM events").fetchall()[0]
    rows = cohort.num_rows
    print(f"data: {args.patients:,} patients, {n_events:,} events, {n_codes} codes; {rows:,} index stays "
          f"(readmission-30d, discharge), {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}", flush=True)

    def careloop(cohort_fp: Path, feats_fp: Path, label: str) -> tuple:
        wall, peak, out = run([sys.executable, "-c", CHILD, str(store), str(cohort_fp), str(feats_fp),
                               str(args.threads)], log=OUT / "careloop-extract.log")
        info = json.loads(out.strip().splitlines()[-1])
        return (label, info["rows"], info["wall"], wall, peak, f"{info['columns']} cols",
                check_careloop(con, cohort_fp, feats_fp))

    results = [careloop(cohort_fp, feats_fp, "careloop")]
    mt_error = None
    if not args.skip_medstab:
        sub_fp = OUT / "cohort-medstab.parquet"
        pq.write_table(cohort.slice(0, args.medstab_rows), sub_fp)
        results.append(careloop(sub_fp, OUT / "careloop-features-medstab.parquet", "careloop (subset)"))
        try:
            if not (args.medstab_venv / "bin" / "meds-tab-describe").exists():
                raise RuntimeError(f"no meds-tab in {args.medstab_venv}: python -m venv {args.medstab_venv} && "
                                   f"{args.medstab_venv}/bin/pip install meds-tab==0.1")
            t0 = time.perf_counter()
            shards = export_meds(con, sub_fp, meds, args.shard_subjects)
            n_sub = con.execute(f"SELECT count(*) FROM read_parquet('{meds}/data/train/*.parquet')").fetchall()[0][0]
            print(f"meds-tab subset: the first {args.medstab_rows:,} index stays, all {n_sub:,} events of their "
                  f"subjects, {shards} MEDS shards (export {time.perf_counter() - t0:.1f} s, not timed)", flush=True)
            mt_wall, mt_peak, steps = run_medstab(args.medstab_venv, meds, 2)
            ncols = sum(len(medstab_matrix(meds, shards, w, a)[0]) for w in WINDOWS for a in AGGS)
            detail = ", ".join(f"{n} {w:.0f}s" for n, w in steps)
            results.append(("meds-tab 0.1", args.medstab_rows, mt_wall, mt_wall, mt_peak,
                            f"{ncols} ts cols; {detail}", check_medstab(con, meds, shards)))
        except Exception as exc:  # report why, and still print careloop's figures
            mt_error = str(exc)
    print(f"\n{'tool':<18}{'rows':>9}{'wall s':>9}{'rows/s':>10}{'peak MB':>9}  (process wall s) notes")
    for name, n, w, pw, peak, note, _ in results:
        print(f"{name:<18}{n:>9,}{w:>9.1f}{n / w:>10,.0f}{peak / 1e6:>9,.0f}  ({pw:.1f}) {note}")
    if len(results) == 3:
        print(f"ratio meds-tab / careloop on the same {args.medstab_rows:,} rows: {results[2][2] / results[1][2]:.0f}x "
              f"(process wall incl. start-up: {results[2][3] / results[1][3]:.0f}x)")
    for name, *_, check in results:
        print(f"check {name}: {check}")
    if mt_error:
        print(f"meds-tab not run: {mt_error}")

if __name__ == "__main__":
    main()
