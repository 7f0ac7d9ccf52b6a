"""Benchmark `careloop synth`: patients/s, resources/s, bytes written and peak memory of the process tree.

Target (issue 2): 100,000 patients in at most 3 minutes on 2 cores, peak memory at most 1.5 GB.
Peak memory is the largest sum of PSS (shared pages counted once) over careloop and its workers, sampled every 100 ms
(pages shared after fork are counted in each process, so the figure errs high).

    python bench/synth.py                   # 100,000 patients, 2 workers
    python bench/synth.py --patients 20000 --workers 1
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

from _memory import run_sampled

BENCH_OUT = Path(__file__).resolve().parents[1] / "bench-out"  # on the project's disk, not a tmpfs or /tmp
TARGET_SECONDS = 180.0
TARGET_PEAK_GB = 1.5


def run(patients: int, workers: int, seed: int, out: Path) -> dict:
    cmd = [sys.executable, "-m", "careloop.cli", "synth", "--patients", str(patients), "--workers", str(workers),
           "--seed", str(seed), "--out", str(out), "--overwrite", "--json"]
    summary, wall, peak = run_sampled(cmd, "careloop synth")
    disk = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return {"summary": summary, "wall": wall, "peak": peak, "disk": disk}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--patients", type=int, default=100_000)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None, help="where to write (default: a new folder in bench-out/)")
    ap.add_argument("--keep", action="store_true", help="keep the output")
    args = ap.parse_args()
    BENCH_OUT.mkdir(exist_ok=True)
    out = args.out or Path(tempfile.mkdtemp(prefix="synth-", dir=BENCH_OUT)) / "hospital"
    try:
        r = run(args.patients, args.workers, args.seed, out)
    finally:
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)
    s = r["summary"]
    n_res = s["resources_total"]
    print(f"careloop synth: {args.patients:,} patients, {args.workers} workers, {os.cpu_count()} cores")
    print(f"  resources          {n_res:,} ({n_res / args.patients:.0f} per patient), "
          f"{s['inpatient_stays']:,} inpatient stays")
    print(f"  wall time          {r['wall']:.1f} s   (target <= {TARGET_SECONDS:.0f} s at 100k: "
          f"{r['wall'] / TARGET_SECONDS * 100_000 / args.patients:.2f}x of budget, scaled)")
    print(f"  patients/s         {args.patients / r['wall']:,.0f}")
    print(f"  resources/s        {n_res / r['wall']:,.0f}")
    print(f"  bytes written      {r['disk'] / 1e9:.2f} GB on disk ({r['disk'] / r['wall'] / 1e6:.0f} MB/s)")
    print(f"  peak memory        {r['peak'] / 1e9:.2f} GB (process tree PSS; target <= {TARGET_PEAK_GB} GB)")


if __name__ == "__main__":
    main()
