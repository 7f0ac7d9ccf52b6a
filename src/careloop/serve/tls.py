"""HTTPS for `careloop serve`: CDS Hooks requires TLS on every exchange (checklist C-01).

The service terminates TLS itself (`--tls-cert`, `--tls-key`: uvicorn with the context of `server_context`, TLS 1.2
at least, whatever the host's OpenSSL defaults) or stands behind a TLS-terminating proxy named with `--proxy`.
Plain HTTP is served only on loopback, or behind such a proxy: `listening_policy` refuses anything else before a
worker starts.

The certificate and key are checked once, before any worker starts (`check_certificate`): readable PEM, the key
matches the certificate, the certificate is in its validity period; a certificate close to its end, or one that
does not name the host of `base_url` (the URL the EHR calls and signs as `aud`), gives a warning.

`self_signed` makes a throwaway CA and a server certificate for loopback, for the demo and the tests; a hospital
uses its own PKI.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from careloop.errors import CareloopError

MIN_TLS = ssl.TLSVersion.TLSv1_2
EXPIRY_WARNING = dt.timedelta(days=30)


def harden(ctx: ssl.SSLContext) -> ssl.SSLContext:
    """At least TLS 1.2 (SMART, and OpenSSL builds that still allow 1.0/1.1), no TLS compression, no renegotiation."""
    ctx.minimum_version = MIN_TLS
    ctx.options |= ssl.OP_NO_COMPRESSION | getattr(ssl, "OP_NO_RENEGOTIATION", 0)
    return ctx


def server_context(config: Any, default: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
    """uvicorn's `ssl_context_factory`: its context from the cert and key files, hardened. Module-level so that it
    reaches each worker process (uvicorn builds the context in every worker)."""
    return harden(default())


@dataclass
class CertificateCheck:
    not_after: dt.datetime
    names: list[str]  # the DNS names and IP addresses the certificate is valid for
    warnings: list[str] = field(default_factory=list)


def _load_certificate(cert: Path):
    from cryptography import x509

    try:
        data = cert.read_bytes()
    except OSError as exc:
        raise CareloopError(f"--tls-cert {cert}: cannot read it ({exc.strerror or exc})") from None
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError:
        raise CareloopError(f"--tls-cert {cert}: not a PEM certificate") from None


def _names(certificate) -> list[str]:
    from cryptography import x509

    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [*san.get_values_for_type(x509.DNSName), *(str(ip) for ip in san.get_values_for_type(x509.IPAddress))]


def _covers(names: list[str], host: str) -> bool:
    host = host.lower().rstrip(".")
    try:
        return str(ipaddress.ip_address(host)) in names
    except ValueError:
        pass
    for name in (n.lower() for n in names):
        if name == host or (name.startswith("*.") and host.count(".") == name.count(".")
                            and host.split(".", 1)[1] == name[2:]):
            return True
    return False


def check_certificate(cert: Path, key: Path, *, base_url: str | None = None,
                      now: dt.datetime | None = None) -> CertificateCheck:
    """Refuse a certificate and key the server could not serve with (CareloopError, saying why); warn about one that
    ends within 30 days or does not name `base_url`'s host."""
    certificate = _load_certificate(cert)
    if not key.is_file():
        raise CareloopError(f"--tls-key {key}: no such file")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        why = "the key does not match the certificate" if "KEY_VALUES_MISMATCH" in str(exc) \
            else f"cannot load the key ({exc.reason or exc})"
        raise CareloopError(f"--tls-key {key}: {why}") from None
    except OSError as exc:
        raise CareloopError(f"--tls-key {key}: cannot read it ({exc.strerror or exc})") from None
    now = now or dt.datetime.now(dt.UTC)
    start, end = certificate.not_valid_before_utc, certificate.not_valid_after_utc
    if now < start:
        raise CareloopError(f"--tls-cert {cert}: not valid before {start:%Y-%m-%d %H:%M} UTC")
    if now >= end:
        raise CareloopError(f"--tls-cert {cert}: expired on {end:%Y-%m-%d %H:%M} UTC")
    out = CertificateCheck(end, _names(certificate))
    if end - now < EXPIRY_WARNING:
        out.warnings.append(f"the TLS certificate expires on {end:%Y-%m-%d} ({(end - now).days} days from now)")
    host = urlsplit(base_url).hostname if base_url else None
    if host and not _covers(out.names, host):
        out.warnings.append(f"the TLS certificate does not name {host} (the host of base_url), so the EHR will "
                            f"refuse it; it names {', '.join(out.names) or 'no host (no subjectAltName)'}")
    return out


def listening_policy(host: str, *, tls: bool, proxy: str | None, base_url: str) -> None:
    """CareloopError unless this way of listening keeps the exchanges on TLS: TLS here, or plain HTTP on loopback or
    behind the named TLS proxy; and `base_url` (what the EHR calls and signs as `aud`) says https when TLS is on."""
    from careloop.serve.config import is_loopback

    if tls and urlsplit(base_url).scheme != "https":
        raise CareloopError(f"base_url {base_url} is http://, but the service serves HTTPS (--tls-cert): the EHR "
                            "calls, and signs as aud, the https:// URL")
    if not tls and proxy is None and not is_loopback(host):
        raise CareloopError(f"--host {host} without TLS: CDS Hooks exchanges must use HTTPS. Give --tls-cert and "
                            "--tls-key, or --proxy ADDRESS when a TLS-terminating proxy in front forwards to this port")


def self_signed(folder: Path, hosts: tuple[str, ...] = ("127.0.0.1", "localhost"), *, days: int = 365,
                now: dt.datetime | None = None) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for `hosts`, signed by it (ECDSA P-256), written to `folder`:
    (ca.pem, server.pem, server-key.pem); the keys readable by the owner only. For the demo and the tests."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = now or dt.datetime.now(dt.UTC)
    start, end = now - dt.timedelta(minutes=5), now + dt.timedelta(days=days)
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "careloop throwaway CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                       crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    alt: list[x509.GeneralName] = []
    for h in hosts:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            alt.append(x509.DNSName(h))
    leaf = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = folder / "ca.pem", folder / "server.pem", folder / "server-key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    paths[2].touch(mode=0o600)
    paths[2].chmod(0o600)
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


def client_context(ca: Path) -> ssl.SSLContext:
    """A client context that trusts only `ca` (the demo's EHR calling the demo service)."""
    return harden(ssl.create_default_context(cafile=str(ca)))


__all__ = ["MIN_TLS", "CertificateCheck", "check_certificate", "client_context", "harden", "listening_policy",
           "self_signed", "server_context"]
