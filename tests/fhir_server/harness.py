"""Start the loopback FHIR R4 test server (Medplum FhirRouter + MemoryRepository, see server.mjs) from Python.

No pytest dependency: usable from fixtures, scripts and benchmarks alike.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import gzip
import hashlib
import json
import os
import queue
import secrets
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

SERVER_DIR = Path(__file__).resolve().parent
MIN_NODE = (20, 19)


class FhirServerError(RuntimeError):
    """The test FHIR server could not be installed or started."""


def _node_version(node: str) -> tuple[int, int]:
    out = subprocess.run([node, "--version"], capture_output=True, text=True, check=True).stdout.strip()
    major, minor = out.lstrip("v").split(".")[:2]
    return int(major), int(minor)


def ensure_node_modules(cache_dir: Path | None = None) -> Path:
    """Install the server's npm dependencies (``npm ci``) once; return the node_modules path.

    ``cache_dir`` is passed to npm as ``--cache`` (default: npm's own cache). Safe to call from
    several processes at once (a file lock serialises the install).
    """
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        raise FhirServerError(
            "node and npm are needed for the FHIR test server (tests/fhir_server): install Node >= 20.19"
        )
    if _node_version(node) < MIN_NODE:
        raise FhirServerError(f"Node >= {MIN_NODE[0]}.{MIN_NODE[1]} is needed, found {_node_version(node)}")
    modules = SERVER_DIR / "node_modules"
    marker = modules / ".package-lock.json"  # written by npm at the end of a successful install
    lock = SERVER_DIR / "package-lock.json"
    with open(SERVER_DIR / ".npm-install.lock", "w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        if marker.exists() and marker.stat().st_mtime >= lock.stat().st_mtime:
            return modules
        cmd = [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"]
        if cache_dir is not None:
            cmd += ["--cache", str(cache_dir)]
        proc = subprocess.run(cmd, cwd=SERVER_DIR, capture_output=True, text=True)
        if proc.returncode != 0 or not marker.exists():
            raise FhirServerError(f"`{' '.join(cmd)}` failed in {SERVER_DIR}:\n{proc.stdout}\n{proc.stderr}")
    return modules


@dataclass
class FhirServer:
    """A running test server. ``admin_token`` is always accepted (for loading data)."""

    base_url: str  # http://127.0.0.1:PORT/fhir/R4
    token_url: str  # http://127.0.0.1:PORT/auth/token
    port: int
    admin_token: str
    process: subprocess.Popen[bytes] = field(repr=False)

    @property
    def stats_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/_stats"

    def stats(self) -> dict[str, Any]:
        """Request counts by path, plus ``token_grants``, ``token_failures``, ``unauthorized``, ``faults_served``."""
        return self._admin("GET", "/_stats")

    def reset_stats(self) -> dict[str, Any]:
        """Zero all counters (so that a test can assert exact counts on a shared server)."""
        return self._admin("DELETE", "/_stats")

    def inject_fault(
        self,
        status: int | None = None,
        *,
        count: int = 1,
        path_prefix: str = "/fhir/R4",
        query_contains: str | None = None,
        method: str | None = None,
        operation_outcome: str | None = None,
        retry_after: float | None = None,
        body: Any = None,
        content_type: str | None = None,
        delay_ms: int | None = None,
    ) -> list[dict[str, Any]]:
        """Make the next ``count`` matching requests fail; return the pending faults.

        A request matches when its path starts with ``path_prefix`` (``/auth/token`` works too), its query contains
        ``query_contains`` and its method is ``method`` (both optional). It is answered with ``status`` and an
        OperationOutcome whose diagnostics are ``operation_outcome`` (or ``body`` instead: a ``str`` is sent as is,
        anything else as JSON), plus ``Retry-After: retry_after``. ``delay_ms`` waits first; without ``status`` the
        request is then served normally (for client timeouts).
        """
        fault = {
            "status": status,
            "count": count,
            "path_prefix": path_prefix,
            "query_contains": query_contains,
            "method": method,
            "operation_outcome": operation_outcome,
            "retry_after": retry_after,
            "body": body,
            "content_type": content_type,
            "delay_ms": delay_ms,
        }
        return self._admin("POST", "/_faults", {k: v for k, v in fault.items() if v is not None})["faults"]

    def clear_faults(self) -> None:
        """Drop faults that have not fired yet."""
        self._admin("DELETE", "/_faults")

    def _admin(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data, method=method)
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    def request(self, method: str, path: str, body: Any = None) -> Any:
        """Send one FHIR request (path relative to base_url) with the admin token; return the parsed JSON."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            f"{self.base_url}/{path.lstrip('/')}",
            data=data,
            method=method,
            headers={"Authorization": f"Bearer {self.admin_token}", "Content-Type": "application/fhir+json"},
        )
        with urllib.request.urlopen(req, timeout=120) as resp:
            return json.loads(resp.read() or b"null")

    def load_bundle(self, bundle: Path | dict[str, Any]) -> dict[str, Any]:
        """POST a transaction/batch Bundle (dict, .json or .json.gz); raise if any entry failed."""
        if isinstance(bundle, Path):
            opener = gzip.open if bundle.suffix == ".gz" else open
            with opener(bundle, "rb") as fh:
                bundle = json.load(fh)
        result = self.request("POST", "", bundle)
        failed = [e["response"] for e in result.get("entry", []) if not e["response"]["status"].startswith("2")]
        if failed:
            raise FhirServerError(f"{len(failed)} bundle entries failed, first: {json.dumps(failed[0])[:500]}")
        return result


@contextlib.contextmanager
def run_fhir_server(
    *,
    static_token: str | None = None,
    clients: list[dict[str, Any]] | None = None,
    token_ttl: int = 300,
    default_count: int = 20,
    startup_timeout: float = 60.0,
) -> Iterator[FhirServer]:
    """Run ``node server.mjs`` on a free loopback port for the duration of the ``with`` block.

    ``clients``: ``[{"client_id": ..., "jwks": {"keys": [public JWK, ...]}}]`` allowed to use ``/auth/token``;
    a client's optional ``"token_ttl"`` (seconds) overrides ``token_ttl`` for its tokens.
    """
    ensure_node_modules()
    admin_token = secrets.token_urlsafe(24)
    with tempfile.TemporaryDirectory(prefix="careloop-fhir-") as tmp:
        clients_file = Path(tmp) / "clients.json"
        clients_file.write_text(json.dumps(clients or []))
        env = {
            **os.environ,
            "PORT": "0",
            "FHIR_STATIC_TOKEN": ",".join(t for t in (static_token, admin_token) if t),
            "FHIR_CLIENTS_FILE": str(clients_file),
            "FHIR_TOKEN_TTL_SECONDS": str(token_ttl),
            "FHIR_DEFAULT_COUNT": str(default_count),
        }
        stderr_path = Path(tmp) / "stderr.log"
        with open(stderr_path, "wb") as stderr:
            proc = subprocess.Popen(
                ["node", "server.mjs"], cwd=SERVER_DIR, env=env, stdout=subprocess.PIPE, stderr=stderr
            )
        lines: queue.Queue[str] = queue.Queue()

        def drain() -> None:
            assert proc.stdout is not None
            for raw in proc.stdout:
                lines.put(raw.decode(errors="replace").strip())

        threading.Thread(target=drain, daemon=True).start()
        try:
            port = _wait_listening(proc, lines, startup_timeout, stderr_path)
            yield FhirServer(
                base_url=f"http://127.0.0.1:{port}/fhir/R4",
                token_url=f"http://127.0.0.1:{port}/auth/token",
                port=port,
                admin_token=admin_token,
                process=proc,
            )
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_listening(proc: subprocess.Popen[bytes], lines: queue.Queue[str], timeout: float, stderr: Path) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.2)
        except queue.Empty:
            if proc.poll() is not None:
                break
            continue
        if line.startswith("LISTENING "):
            return int(line.split()[1])
    state = f"exited with {proc.returncode}" if proc.poll() is not None else f"not ready after {timeout:.0f} s"
    raise FhirServerError(f"FHIR test server {state}; stderr:\n{stderr.read_text(errors='replace')[-4000:]}")


def _b64url_uint(value: int, length: int | None = None) -> str:
    raw = value.to_bytes(length or (value.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    fmt = serialization.PrivateFormat.PKCS8
    return key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())


def _with_kid(jwk: dict[str, str], alg: str) -> dict[str, str]:
    kid = hashlib.sha256(json.dumps(jwk, sort_keys=True).encode()).hexdigest()[:16]
    return {**jwk, "kid": kid, "alg": alg, "use": "sig"}


def make_rsa_key(bits: int = 2048) -> tuple[bytes, dict[str, Any]]:
    """New RSA key: (private key PKCS#8 PEM, public JWK with kid and alg RS384)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    pub = key.public_key().public_numbers()
    jwk = {"kty": "RSA", "n": _b64url_uint(pub.n), "e": _b64url_uint(pub.e)}
    return _pem(key), _with_kid(jwk, "RS384")


def make_ec_key() -> tuple[bytes, dict[str, Any]]:
    """New P-384 key: (private key PKCS#8 PEM, public JWK with kid and alg ES384)."""
    key = ec.generate_private_key(ec.SECP384R1())
    pub = key.public_key().public_numbers()
    jwk = {"kty": "EC", "crv": "P-384", "x": _b64url_uint(pub.x, 48), "y": _b64url_uint(pub.y, 48)}
    return _pem(key), _with_kid(jwk, "ES384")
