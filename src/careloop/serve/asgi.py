"""The service's ASGI app, built the same way by `careloop serve` and by each of its worker processes.

With `--workers N`, uvicorn starts N processes that each call `build()`; they share the listening socket, and
everything that must be shared (jti claims, cards, feedback, the kill switch, the audit chain) lives in the state
store, whose transactions serialise them. The options travel in the environment (`CARELOOP_SERVE`), and so does
the dashboard's cookie secret, so that a sign-in holds whichever worker answers.
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

    def export(self) -> None:
        os.environ[ENV] = json.dumps(asdict(self))
        if self.dashboard and not os.environ.get(SECRET_ENV):
            os.environ[SECRET_ENV] = secrets.token_urlsafe(32)


def make_app(opts: Options, *, seed: bool = False) -> FastAPI:
    """The CDS Hooks app for `opts`, with the dashboard mounted if asked. `seed`: add the demo's synthetic activity
    to the state store (once, by the parent process)."""
    from careloop.errors import CareloopError
    from careloop.serve.app import Service, create_app
    from careloop.serve.config import load_config

    service = Service(Path(opts.model), load_config(Path(opts.config)))
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
    return make_app(Options(**json.loads(os.environ[ENV])))


__all__ = ["Options", "build", "make_app"]
