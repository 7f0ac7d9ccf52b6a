"""A throwaway PostgreSQL server for tests: ``start_postgres`` and pytest fixture factories.

    url, stop = start_postgres(tmp_dir)        # postgresql://postgres@127.0.0.1:PORT/careloop_test
    ...
    stop()

The cluster is created with ``initdb`` (trust authentication, no fsync: it is thrown away), started with
``pg_ctl`` on a free loopback port with its Unix socket in the same temporary directory, and deleted by
``stop()``. PostgreSQL refuses to run as root, so when the tests run as root the cluster directory is handed to
the ``postgres`` system user and the server binaries run through ``runuser -u postgres --``.

Binaries are looked up in ``$CARELOOP_PG_BIN``, then ``/usr/lib/postgresql/<newest>/bin`` (Debian), then
``PATH``. When they are missing the fixtures skip, except under ``CI`` (the variable set), where they fail:
CI must really run PostgreSQL (``.ci/run`` installs it with ``apt-get install -y postgresql``).

In a conftest:

    from tests.pg import postgres_server_fixture, database_url_fixture
    pg_server = postgres_server_fixture()          # session scope, started at most once per test session
    db_url = database_url_fixture()                # parametrised: "sqlite" and "postgresql" (a fresh database each)

The server is shared by every conftest that declares the fixture (reference-counted), so two test folders cost
one start (about 1 s on the 2-core CI machine).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import re
import shlex
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

DB_NAME = "careloop_test"
_NAME = re.compile(r"[^a-z0-9_]+")


def find_pg_bin() -> Path | None:
    """The directory holding initdb and pg_ctl, or None."""
    env = os.environ.get("CARELOOP_PG_BIN")
    if env:
        return Path(env) if (Path(env) / "initdb").exists() else None
    debian = sorted(
        (p for p in Path("/usr/lib/postgresql").glob("*/bin") if (p / "initdb").exists()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    if debian:
        return debian[-1]
    found = shutil.which("initdb")
    return Path(found).parent if found and shutil.which("pg_ctl") else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _accessible_by(user: pwd.struct_passwd, path: Path) -> bool:
    """Whether every parent of ``path`` can be traversed by ``user`` (other-execute bit, or owned by them)."""
    for parent in [path, *path.parents]:
        st = parent.stat()
        if st.st_uid != user.pw_uid and not st.st_mode & 0o001:
            return False
    return True


def start_postgres(tmp_dir: str | os.PathLike | None = None) -> tuple[str, Callable[[], None]]:
    """Create and start a PostgreSQL cluster in a new directory under ``tmp_dir`` (or the system temp dir when
    ``tmp_dir`` cannot be reached by the ``postgres`` user), create the ``careloop_test`` database, and return
    ``(url, stop)``. Raises RuntimeError when the binaries are missing or the server does not start."""
    bindir = find_pg_bin()
    if bindir is None:
        raise RuntimeError("PostgreSQL server binaries (initdb, pg_ctl) not found; install the postgresql package")
    as_root = os.geteuid() == 0
    prefix: list[str] = []
    owner = None
    if as_root:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            raise RuntimeError("running as root and there is no 'postgres' user to run the server as") from None
        runuser = shutil.which("runuser")
        prefix = [runuser, "-u", "postgres", "--"] if runuser else ["su", "postgres", "-s", "/bin/sh", "-c"]
    base = Path(tmp_dir) if tmp_dir is not None else Path(tempfile.gettempdir())
    base.mkdir(parents=True, exist_ok=True)
    if owner is not None and not _accessible_by(owner, base):
        base = Path(tempfile.gettempdir())
    root = Path(tempfile.mkdtemp(prefix="careloop-pg-", dir=base))
    if owner is not None:
        os.chown(root, owner.pw_uid, owner.pw_gid)
    data, log = root / "data", root / "server.log"

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        argv = [str(a) for a in args]
        su = bool(prefix) and prefix[-1] == "-c"  # su needs one shell string
        argv = [*prefix, " ".join(shlex.quote(a) for a in argv)] if su else [*prefix, *argv]
        return subprocess.run(argv, check=check, capture_output=True, text=True, timeout=120)

    try:
        run(bindir / "initdb", "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync",
            "--locale=C")
    except subprocess.CalledProcessError as exc:
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(f"initdb failed: {exc.stderr.strip()[-500:]}") from None
    port = 0
    for _ in range(5):  # a port found free may be taken before the server binds it: try another
        port = _free_port()
        opts = (f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off "
                "-c full_page_writes=off -c max_connections=200")
        res = run(bindir / "pg_ctl", "-D", data, "-o", opts, "-l", log, "-w", "-t", "60", "start", check=False)
        if res.returncode == 0:
            break
    else:
        text = log.read_text(errors="replace")[-800:] if log.exists() else res.stderr
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(f"pg_ctl start failed: {text.strip()}")

    stopped = threading.Event()

    def stop() -> None:
        if stopped.is_set():
            return
        stopped.set()
        run(bindir / "pg_ctl", "-D", data, "-m", "immediate", "-w", "stop", check=False)
        shutil.rmtree(root, ignore_errors=True)

    atexit.register(stop)  # a crashed or interrupted session still stops its server
    url = f"postgresql://postgres@127.0.0.1:{port}"
    try:
        _admin(url, f"CREATE DATABASE {DB_NAME}")
    except Exception:
        stop()
        raise
    return f"{url}/{DB_NAME}", stop


def _admin(server_url: str, sql: str) -> None:
    import psycopg

    with psycopg.connect(f"{server_url}/postgres", autocommit=True) as conn:
        conn.execute(sql)


def fresh_database(url: str, name: str) -> str:
    """Create a new, empty database on the server of ``url`` (any database URL on it) and return its URL.
    ``name`` is sanitised and made unique; creation takes about 40 ms."""
    server = url.rsplit("/", 1)[0]
    fresh_database.counter = getattr(fresh_database, "counter", 0) + 1  # type: ignore[attr-defined]
    db = f"t{fresh_database.counter}_{_NAME.sub('_', name.lower())}"[:60].rstrip("_")  # type: ignore[attr-defined]
    _admin(server, f"CREATE DATABASE {db} TEMPLATE template0 STRATEGY FILE_COPY")
    return f"{server}/{db}"


def clone_database(template_url: str, target_url: str) -> str:
    """Replace the database of ``target_url`` with a copy of ``template_url``'s (same server; nobody may be connected
    to either). Faster than rebuilding a populated fixture: a file copy, about 50 ms."""
    server, template = template_url.rsplit("/", 1)
    target = target_url.rsplit("/", 1)[1]
    _admin(server, f"DROP DATABASE IF EXISTS {target} WITH (FORCE)")
    _admin(server, f"CREATE DATABASE {target} TEMPLATE {template} STRATEGY FILE_COPY")
    return target_url


def drop_database(url: str) -> None:
    server, db = url.rsplit("/", 1)
    with contextlib.suppress(Exception):
        _admin(server, f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")


# ---------------------------------------------------------------- pytest fixtures
_shared: dict = {"refs": 0, "url": None, "stop": None, "error": None}
_shared_lock = threading.Lock()


def _acquire() -> str:
    with _shared_lock:
        if _shared["url"] is None and _shared["error"] is None:
            try:
                _shared["url"], _shared["stop"] = start_postgres()
            except RuntimeError as exc:
                _shared["error"] = str(exc)
        if _shared["error"] is not None:
            message = f"PostgreSQL unavailable: {_shared['error']}"
            if os.environ.get("CI"):
                pytest.fail(f"{message} (CI is set: PostgreSQL tests must run)", pytrace=False)
            pytest.skip(message)
        _shared["refs"] += 1
        return _shared["url"]


def _release() -> None:
    with _shared_lock:
        _shared["refs"] -= 1
        if _shared["refs"] == 0 and _shared["stop"] is not None:
            _shared["stop"]()
            _shared["url"] = _shared["stop"] = None


def postgres_server_fixture(name: str | None = None):
    """A session-scoped fixture yielding the URL of the shared throwaway server's ``careloop_test`` database.
    Started on first use, stopped when the last conftest's fixture finishes. Skips (fails under CI) without
    PostgreSQL."""

    @pytest.fixture(scope="session", name=name)
    def pg_server():
        url = _acquire()
        try:
            yield url
        finally:
            _release()

    return pg_server


def database_url_fixture(server_fixture: str = "pg_server", name: str | None = None):
    """A function-scoped fixture parametrised over ``sqlite`` (a file in tmp_path) and ``postgresql`` (a fresh
    database on the shared server, dropped afterwards). PostgreSQL starts only if a postgresql case runs."""

    @pytest.fixture(params=["sqlite", "postgresql"], name=name)
    def db_url(request, tmp_path):
        if request.param == "sqlite":
            yield f"sqlite:///{tmp_path / 'state.db'}"
            return
        server = request.getfixturevalue(server_fixture)
        url = fresh_database(server, request.node.name)
        try:
            yield url
        finally:
            drop_database(url)

    return db_url
