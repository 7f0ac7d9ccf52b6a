"""HTTPS (checklist C-01): `careloop serve --tls-cert --tls-key` over real TLS on loopback, TLS 1.2 at least, plain
HTTP refused on the TLS port and off loopback; the certificate checked before any worker starts."""

from __future__ import annotations

import datetime as dt
import re
import socket
import ssl
import subprocess
import sys
import uuid
import warnings

import httpx
import pytest
import yaml

from careloop.cli import _proxy_addresses
from careloop.errors import CareloopError
from careloop.serve.demo import _pick
from careloop.serve.tls import (
    MIN_TLS,
    check_certificate,
    client_context,
    listening_policy,
    self_signed,
    server_context,
)
from tests.fhir_server.harness import make_rsa_key

from .harness import bearer, free_port, hook_request, patient_resources, prefetch_of, wait_for_service, write_config

NOW = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return self_signed(tmp_path_factory.mktemp("pki"), ("127.0.0.1", "localhost"), now=NOW)


# -- the certificate check ------------------------------------------------------------------------------------------

def test_a_good_certificate_names_its_hosts_and_gives_no_warning(pki):
    _, cert, key = pki
    got = check_certificate(cert, key, base_url="https://127.0.0.1:8443", now=NOW)
    assert sorted(got.names) == ["127.0.0.1", "localhost"]
    assert got.not_after == NOW + dt.timedelta(days=365)
    assert got.warnings == []
    assert check_certificate(cert, key, base_url="https://localhost/", now=NOW).warnings == []


def test_a_key_of_another_certificate_an_unreadable_file_or_an_expired_certificate_is_refused(pki, tmp_path):
    _, cert, key = pki
    _, _, other_key = self_signed(tmp_path / "other", now=NOW)
    with pytest.raises(CareloopError, match="the key does not match the certificate"):
        check_certificate(cert, other_key, now=NOW)
    with pytest.raises(CareloopError, match="no such file"):
        check_certificate(cert, tmp_path / "absent.pem", now=NOW)
    with pytest.raises(CareloopError, match="cannot read it"):
        check_certificate(tmp_path / "absent-cert.pem", key, now=NOW)
    (tmp_path / "junk.pem").write_text("not a certificate")
    with pytest.raises(CareloopError, match="not a PEM certificate"):
        check_certificate(tmp_path / "junk.pem", key, now=NOW)
    with pytest.raises(CareloopError, match="expired on 2027-06-01"):
        check_certificate(cert, key, now=NOW + dt.timedelta(days=366))
    with pytest.raises(CareloopError, match="not valid before 2026-05-31 23:55"):
        check_certificate(cert, key, now=NOW - dt.timedelta(days=1))


def test_a_certificate_near_its_end_or_not_naming_the_base_url_host_gives_a_warning(pki, tmp_path):
    _, cert, key = pki
    late = check_certificate(cert, key, base_url="https://127.0.0.1", now=NOW + dt.timedelta(days=355))
    assert late.warnings == ["the TLS certificate expires on 2027-06-01 (10 days from now)"]
    other = check_certificate(cert, key, base_url="https://cds.hospital.example/", now=NOW)
    assert len(other.warnings) == 1 and "does not name cds.hospital.example" in other.warnings[0]
    _, wcert, wkey = self_signed(tmp_path / "wild", ("*.hospital.example",), now=NOW)
    assert check_certificate(wcert, wkey, base_url="https://cds.hospital.example", now=NOW).warnings == []
    for host in ("hospital.example", "a.cds.hospital.example", "cds.hospital.example.evil"):
        assert check_certificate(wcert, wkey, base_url=f"https://{host}", now=NOW).warnings, host


def test_the_server_context_allows_nothing_below_tls_1_2_whatever_the_default_allowed(pki):
    _, cert, key = pki

    def lax() -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.load_cert_chain(cert, key)
        return ctx

    ctx = server_context(None, lax)
    assert ctx.minimum_version == MIN_TLS == ssl.TLSVersion.TLSv1_2
    assert ctx.options & ssl.OP_NO_COMPRESSION


# -- where plain HTTP may be served ---------------------------------------------------------------------------------

def test_plain_http_is_served_only_on_loopback_or_behind_a_named_proxy():
    for host in ("127.0.0.1", "localhost", "::1"):
        listening_policy(host, tls=False, proxy=None, base_url="http://127.0.0.1:8080")
    for host in ("0.0.0.0", "10.1.2.3", "cds.hospital.example"):
        with pytest.raises(CareloopError, match="must use HTTPS"):
            listening_policy(host, tls=False, proxy=None, base_url="https://cds.hospital.example")
        listening_policy(host, tls=False, proxy="10.0.0.5", base_url="https://cds.hospital.example")
        listening_policy(host, tls=True, proxy=None, base_url="https://cds.hospital.example")
    with pytest.raises(CareloopError, match=re.escape("base_url http://127.0.0.1:8443 is http://")):
        listening_policy("127.0.0.1", tls=True, proxy=None, base_url="http://127.0.0.1:8443")


def test_the_proxy_is_named_by_address_never_by_a_wildcard():
    assert _proxy_addresses(" 10.0.0.5, 192.168.0.0/16 ") == "10.0.0.5,192.168.0.0/16"
    for bad in ("*", "proxy.hospital.example", " , "):
        with pytest.raises(CareloopError, match="--proxy"):
            _proxy_addresses(bad)


def test_serve_refuses_to_start_without_https_or_with_a_bad_key_and_says_why(trained_bundle, pki, tmp_path):
    _, cert, key = pki
    _, _, other_key = self_signed(tmp_path / "other")
    cfg = write_config(tmp_path, state=f"sqlite:///{tmp_path / 'state.db'}", jwks={"keys": [make_rsa_key()[1]]},
                       port=8443)
    https_cfg = tmp_path / "https.yaml"
    https_cfg.write_text(yaml.safe_dump(yaml.safe_load(cfg.read_text()) | {"base_url": "https://127.0.0.1:8443"}))
    base = [sys.executable, "-m", "careloop.cli", "serve", "--model", str(trained_bundle), "--port",
            str(free_port())]
    cases = [
        (["--config", str(https_cfg), "--host", "0.0.0.0"], "must use HTTPS"),
        (["--config", str(https_cfg), "--tls-cert", str(cert)], "--tls-cert and --tls-key go together"),
        (["--config", str(cfg), "--tls-cert", str(cert), "--tls-key", str(key)], "is http://"),
        (["--config", str(https_cfg), "--tls-cert", str(cert), "--tls-key", str(other_key)], "does not match"),
        (["--config", str(https_cfg), "--host", "0.0.0.0", "--proxy", "*"], "not an IP address"),
    ]
    for args, why in cases:  # subprocesses with a time limit: a service that started anyway fails the test
        res = subprocess.run(base + args, capture_output=True, text=True, timeout=120)
        out = " ".join((res.stdout + res.stderr).split())
        assert res.returncode == 2 and why in out and "Traceback" not in out, (args, out)
    assert not (tmp_path / "state.db").exists()  # refused before the service opened its state store


# -- a real TLS server: two workers, each with the hardened context ----------------------------------------------

@pytest.fixture(scope="module")
def https_service(trained_bundle, tmp_path_factory):
    folder = tmp_path_factory.mktemp("https")
    ca, cert, key = self_signed(folder / "pki")  # valid from now
    key_pem, jwk = make_rsa_key()
    port = free_port()
    cfg = write_config(folder, state=f"sqlite:///{folder / 'state.db'}", jwks={"keys": [jwk]}, port=port)
    url = f"https://127.0.0.1:{port}"
    cfg.write_text(yaml.safe_dump(yaml.safe_load(cfg.read_text()) | {"base_url": url}))
    log = (folder / "server.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "careloop.cli", "serve", "--model", str(trained_bundle),
                             "--config", str(cfg), "--port", str(port), "--workers", "2", "--tls-cert", str(cert),
                             "--tls-key", str(key)], stdout=log, stderr=subprocess.STDOUT)
    try:
        for _ in range(600):
            try:
                httpx.get(f"{url}/cds-services", verify=client_context(ca), timeout=0.5)
                break
            except httpx.HTTPError:
                if proc.poll() is not None:
                    raise RuntimeError((folder / "server.log").read_text()) from None
                import time

                time.sleep(0.1)
        yield url, port, ca, (key_pem, jwk["kid"])
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def _handshake(port: int, highest: ssl.TLSVersion) -> str:
    """The version a client offering TLS 1.0 up to `highest` (weak ciphers allowed, so that the client itself can
    offer the old versions) gets from the server."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version, ctx.maximum_version = ssl.TLSVersion.TLSv1, highest
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, ctx.wrap_socket(raw) as tls:
        return tls.version()


def test_each_worker_serves_tls_1_2_and_1_3_and_refuses_older_versions(https_service):
    _, port, *_ = https_service
    for _ in range(6):  # new connections, which the two workers share
        assert _handshake(port, ssl.TLSVersion.TLSv1_2) == "TLSv1.2"
        assert _handshake(port, ssl.TLSVersion.TLSv1_3) == "TLSv1.3"
        for old in (ssl.TLSVersion.TLSv1_1, ssl.TLSVersion.TLSv1):
            with pytest.raises(ssl.SSLError) as err:
                _handshake(port, old)
            assert err.value.reason != "NO_PROTOCOLS_AVAILABLE"  # the client offered it; the server refused


def test_plain_http_to_the_tls_port_gets_no_answer_and_an_untrusted_certificate_is_refused(https_service):
    url, port, *_ = https_service
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{port}/cds-services", timeout=10)
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{url}/cds-services", timeout=10)  # the system's CAs do not know the throwaway CA


def test_a_signed_discharge_call_over_https_is_scored_and_answers_carry_hsts(https_service, trained_bundle,
                                                                          hospital_store, hospital):
    url, _, ca, (key_pem, kid) = https_service
    stays, _ = _pick(trained_bundle, hospital_store[0])
    s = stays[0]
    res = patient_resources(hospital / "ndjson", {s["patient_id"]})
    aud = f"{url}/cds-services/readmission-risk"
    body = hook_request(s["patient_id"], s["encounter_id"], prefetch_of(res[s["patient_id"]]))
    body["hookInstance"] = str(uuid.uuid4())
    with httpx.Client(verify=client_context(ca), timeout=60) as ehr:
        discovery = ehr.get(f"{url}/cds-services")
        answer = ehr.post(aud, json=body, headers=bearer(key_pem, kid, aud))
        plain_aud = ehr.post(aud, json=body | {"hookInstance": str(uuid.uuid4())},
                             headers=bearer(key_pem, kid, aud.replace("https://", "http://")))
    assert discovery.status_code == 200
    assert discovery.headers["strict-transport-security"] == "max-age=31536000"
    assert answer.status_code == 200, answer.text
    assert answer.headers["strict-transport-security"] == "max-age=31536000"
    assert answer.json()["cards"][0]["indicator"] == "warning"  # the riskiest stay the demo picks
    assert plain_aud.status_code == 401  # a token for the http:// URL is not for this endpoint


def test_plain_http_answers_carry_no_hsts(tmp_path, trained_bundle):
    from .harness import Running

    port = free_port()
    running = Running(trained_bundle, write_config(tmp_path, state=f"sqlite:///{tmp_path / 's.db'}",
                                                   jwks={"keys": [make_rsa_key()[1]]}, port=port), port)
    try:
        wait_for_service(running.url)
        r = httpx.get(f"{running.url}/cds-services")
        assert r.status_code == 200 and "strict-transport-security" not in r.headers
    finally:
        running.stop()
