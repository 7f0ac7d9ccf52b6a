"""The service's ASGI app, built the same way by `careloop serve` and by each of its worker processes.

With `--workers N`, uvicorn starts N processes that each call `build()`; they share the listening socket, and
everything that must be shared (jti claims, cards, feedback, the kill switch, the audit chain) lives in the state
store, whose transactions serialise them. The options travel in the environment (`CARELOOP_SERVE`), and so does
the dashboard's cookie secret, so that a sign-in holds whichever worker answers.

With `pin_cpus`, each worker claims a CPU of its own (an advisory lock on a file per CPU, released when the process
ends, so a restarted worker takes the freed one) and keeps its threads there: a process's scoring, event-loop and
journal threads then share one core's caches instead of chasing each other across cores, and the kernel never puts
two workers on one core while another is idle. Under a 50-client load this tightens the latency distribution (the
bench's p99 fell by about a sixth); it is off by default because a shared host may need its cores back.
"""

from __future__ import annotations

import gc
import json
import os
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path

from fastapi import FastAPI

ENV = "CARELOOP_SERVE"
SECRET_ENV = "CARELOOP_DASHBOARD_SECRET"


@dataclass
class Options:
    model: str
    config: str
    dashboard: bool = False
    store: str | None = None
    monitor: str | None = None
    users: str | None = None
    demo: bool = False
    pin_cpus: bool = False
    pin_key: str = ""  # names this server's CPU locks (the parent's pid)

    def export(self) -> None:
        self.pin_key = self.pin_key or str(os.getpid())
        os.environ[ENV] = json.dumps(asdict(self))
        if self.dashboard and not os.environ.get(SECRET_ENV):
            os.environ[SECRET_ENV] = secrets.token_urlsafe(32)


def make_app(opts: Options, *, seed: bool = False, config=None) -> FastAPI:
    """The CDS Hooks app for `opts`, with the dashboard mounted if asked. `seed`: add the demo's synthetic activity
    to the state store (once, by the parent process). `config`: the service config already read from
    `opts.config` (else it is read here)."""
    from careloop.errors import CareloopError
    from careloop.serve.app import Service, create_app
    from careloop.serve.config import load_config

    service = Service(Path(opts.model), config if config is not None else load_config(Path(opts.config)))
    app = create_app(service)
    if opts.dashboard:
        from careloop.web import demo_users, load_users, mount

        if not opts.demo and opts.users is None:
            raise CareloopError("--dashboard needs --users FILE (or --demo for the demo accounts)")
        store = Path(opts.store) if opts.store else None
        mount(app, service, users=demo_users() if opts.demo else load_users(Path(opts.users)),
              monitor_dir=Path(opts.monitor) if opts.monitor else None, store_dir=store)
        if seed and opts.demo and store is not None:
            from careloop.web.demo import seed_activity

            seed_activity(service, store)
    # everything loaded so far (libraries, the bundle, the model) lives as long as the process: keep it out of the
    # cyclic collector's full passes, which would otherwise walk it again and again under load
    gc.collect()
    gc.freeze()
    return app


def build() -> FastAPI:
    """uvicorn's factory in each worker process."""
    opts = Options(**json.loads(os.environ[ENV]))
    if opts.pin_cpus:
        claim_cpu(opts.pin_key)
    return make_app(opts)


def _threads() -> list[int]:
    try:
        return [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        return [0]


_CPU_LOCK: int | None = None  # the claimed CPU's lock file, open for the life of the process


def claim_cpu(key: str) -> int | None:
    """Pin this process to the first CPU no other worker of server `key` holds; the CPU, or None when every CPU is
    taken (more workers than CPUs: left to the kernel) or the platform cannot pin."""
    global _CPU_LOCK
    import fcntl
    import tempfile

    if not hasattr(os, "sched_setaffinity"):
        return None
    for cpu in sorted(os.sched_getaffinity(0)):
        fd = os.open(os.path.join(tempfile.gettempdir(), f"careloop-cpu-{key}-{cpu}.lock"), os.O_RDWR | os.O_CREAT,
                     0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue
        for tid in _threads():  # every thread already running (later ones inherit it from their creator)
            os.sched_setaffinity(tid, {cpu})
        _CPU_LOCK = fd
        return cpu
    return None


__all__ = ["Options", "build", "claim_cpu", "make_app"]
