"""Memory of a process tree, for the benchmarks: proportional set size (PSS) summed over a process and its
children, so pages shared after fork are counted once, not once per worker as a sum of RSS would."""

from __future__ import annotations

import contextlib
import json
import subprocess
import threading
import time

import psutil


def tree_pss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            info = p.memory_full_info()
            total += getattr(info, "pss", info.rss)
    return total


class PeakSampler:
    """Samples `tree_pss(pid)` every `interval` seconds in a thread; `.peak` is the largest seen."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.proc = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(psutil.Error):
                self.peak = max(self.peak, tree_pss(self.proc))
            time.sleep(self.interval)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run_sampled(cmd: list[str], what: str) -> tuple[dict, float, int]:
    """Run cmd, sampling its process tree memory (PSS) every 100 ms; (JSON on stdout, wall s, peak bytes)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    with PeakSampler(proc.pid) as sampler:
        stdout, stderr = proc.communicate()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{what} failed with exit code {proc.returncode}: {stderr.decode()[-2000:]}")
    return json.loads(stdout), wall, sampler.peak
