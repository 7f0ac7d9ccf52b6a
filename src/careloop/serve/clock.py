"""Is this host's clock right? (checklist A-07: audit timestamps in UTC and synchronised; the JWT `exp`, `nbf` and
`iat` checks depend on it too.) `careloop serve` asks the NTP server named in the config (`clock.ntp_server`) once
at start and refuses to start when the clock is further off than `clock.max_skew_ms`; an NTP server that does not
answer stops the start only when `clock.required` is set.

An SNTP client (RFC 4330) is written here rather than taken from a library: the one on PyPI (ntplib) has had no
release since 2021, and one request and four timestamps are all that is needed.
"""

from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass

NTP_EPOCH = 2_208_988_800  # seconds from 1900-01-01 (NTP) to 1970-01-01 (Unix)
_PACKET = struct.Struct("!B B b b 11I")  # 48 bytes: LI/VN/mode, stratum, poll, precision, then 32-bit words


class ClockError(Exception):
    """The NTP server did not answer usefully (why, in words)."""


@dataclass(frozen=True)
class ClockReading:
    server: str
    offset_s: float  # server time minus this host's time
    delay_s: float  # the round trip, less the server's own processing
    stratum: int


def _to_ntp(t: float) -> tuple[int, int]:
    t += NTP_EPOCH
    return int(t), int((t - int(t)) * 2**32) & 0xFFFFFFFF


def _from_ntp(seconds: int, fraction: int) -> float:
    return seconds - NTP_EPOCH + fraction / 2**32


def host_port(server: str) -> tuple[str, int]:
    """`host`, `host:port`, `[v6]:port` or a bare IPv6 address; ValueError for a bad port."""
    if server.startswith("["):
        host, _, rest = server[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else "123"
    elif server.count(":") == 1:
        host, port = server.split(":")
    else:
        host, port = server, "123"
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"not a host or host:port: {server!r}")
    return host, int(port)


def query(server: str, *, timeout: float = 2.0, tries: int = 2) -> ClockReading:
    """One SNTP exchange with `server` (`host` or `host:port`): the clock offset and the round trip."""
    host, port = host_port(server)
    last = "no answer"
    for _ in range(tries):
        try:
            family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
            with socket.socket(family, kind, proto) as s:
                s.settimeout(timeout)
                t0 = time.time()
                sec, frac = _to_ntp(t0)
                request = bytearray(48)
                request[0] = (0 << 6) | (4 << 3) | 3  # no leap warning, version 4, client
                struct.pack_into("!II", request, 40, sec, frac)  # transmit timestamp, echoed as "originate"
                s.sendto(bytes(request), address)
                data, _ = s.recvfrom(512)
                t3 = time.time()
        except TimeoutError:
            last = f"no answer within {timeout:g} s"
            continue
        except OSError as exc:  # the name does not resolve, no route, refused (an ICMP port unreachable)
            raise ClockError(f"cannot reach {server}: {exc.strerror or exc}") from None
        return _reading(server, data, sec, frac, t0, t3)
    raise ClockError(f"{server}: {last}")


def _reading(server: str, data: bytes, sec: int, frac: int, t0: float, t3: float) -> ClockReading:
    if len(data) < 48:
        raise ClockError(f"{server}: a short answer ({len(data)} bytes)")
    first, stratum, _, _, *words = _PACKET.unpack_from(data)
    mode, leap = first & 0x7, first >> 6
    if mode not in (4, 5):
        raise ClockError(f"{server}: not a server's answer (mode {mode})")
    if leap == 3 or stratum == 0:
        raise ClockError(f"{server}: the server says its own clock is not synchronised")
    origin, received, sent = (words[5], words[6]), (words[7], words[8]), (words[9], words[10])
    if origin != (sec, frac):
        raise ClockError(f"{server}: the answer is not to this request")
    t1, t2 = _from_ntp(*received), _from_ntp(*sent)
    return ClockReading(server, ((t1 - t0) + (t2 - t3)) / 2, (t3 - t0) - (t2 - t1), stratum)


def check(server: str, max_skew_ms: int, *, required: bool, timeout: float = 2.0) -> tuple[bool, str]:
    """(may the service start, what to tell the operator)."""
    try:
        r = query(server, timeout=timeout)
    except ClockError as exc:
        what = f"clock not checked: {exc}"
        return (not required), what + (" (clock.required is set)" if required else "")
    ms = r.offset_s * 1000
    side = "behind" if ms > 0 else "ahead of"
    said = f"clock {abs(ms):,.0f} ms {side} {server} (round trip {r.delay_s * 1000:.0f} ms)"
    if abs(ms) > max_skew_ms:
        return False, (f"{said}, more than the {max_skew_ms:,} ms allowed: JWT exp/nbf/iat checks and audit "
                       "timestamps need a synchronised clock (fix the host's NTP, or raise clock.max_skew_ms)")
    return True, said


__all__ = ["ClockError", "ClockReading", "check", "host_port", "query"]
