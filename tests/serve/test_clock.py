"""The clock check at start (checklist A-07), against an NTP server on loopback (real UDP, real NTP packets) whose
clock is set off by a chosen amount."""

from __future__ import annotations

import re
import socket
import struct
import subprocess
import sys
import threading
import time

import pytest
import yaml

from careloop.errors import ConfigError
from careloop.serve.clock import NTP_EPOCH, ClockError, check, host_port, query
from careloop.serve.config import load_config
from tests.fhir_server.harness import make_rsa_key

from .harness import free_port, write_config


class NtpServer:
    """Answers SNTP requests with its clock `skew_s` seconds off this host's (and `mode`, `stratum` as set)."""

    def __init__(self, skew_s: float = 0.0, *, mode: int = 4, stratum: int = 2, echo: bool = True) -> None:
        self.skew_s, self.mode, self.stratum, self.echo = skew_s, mode, stratum, echo
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.requests = 0
        threading.Thread(target=self._serve, daemon=True).start()

    @staticmethod
    def _ntp(t: float) -> tuple[int, int]:
        t += NTP_EPOCH
        return int(t), int((t - int(t)) * 2**32)

    def _serve(self) -> None:
        while True:
            try:
                data, peer = self.sock.recvfrom(512)
            except OSError:
                return
            self.requests += 1
            received = self._ntp(time.time() + self.skew_s)
            origin = struct.unpack_from("!II", data, 40) if self.echo else (1, 2)
            answer = struct.pack("!BBbb11I", (0 << 6) | (4 << 3) | self.mode, self.stratum, 6, -20, 0, 0, 0,
                                 *received, *origin, *received, *self._ntp(time.time() + self.skew_s))
            self.sock.sendto(answer, peer)

    def close(self) -> None:
        self.sock.close()


def _behind_ms(said: str) -> int:
    return int(re.search(r"clock ([\d,]+) ms behind", said).group(1).replace(",", ""))


@pytest.fixture
def ntp():
    servers: list[NtpServer] = []

    def start(*a, **k) -> NtpServer:
        servers.append(NtpServer(*a, **k))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def test_the_offset_is_measured_in_both_directions(ntp):
    assert abs(query(ntp(0.0).address).offset_s) < 0.05
    ahead = query(ntp(5.0).address)
    assert 4.95 < ahead.offset_s < 5.05 and 0 <= ahead.delay_s < 0.5 and ahead.stratum == 2
    assert -7.55 < query(ntp(-7.5).address).offset_s < -7.45


def test_the_check_passes_a_synchronised_clock_and_stops_a_skewed_one(ntp):
    ok, said = check(ntp(0.0).address, 1000, required=True)
    assert ok and said.startswith("clock ") and "round trip" in said
    ok, said = check(ntp(3.0).address, 1000, required=False)
    assert not ok and 2950 < _behind_ms(said) < 3050 and "more than the 1,000 ms allowed" in said
    ok, said = check(ntp(-2.0).address, 5000, required=True)
    assert ok and "ahead of" in said


def test_a_silent_or_unsynchronised_or_foreign_answer_is_no_reading(ntp):
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))  # bound, never answers
    try:
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        with pytest.raises(ClockError, match=r"no answer within 0\.2 s"):
            query(address, timeout=0.2)
        assert check(address, 1000, required=False, timeout=0.2) == (
            True, f"clock not checked: {address}: no answer within 0.2 s")
        ok, said = check(address, 1000, required=True, timeout=0.2)
        assert not ok and said.endswith("(clock.required is set)")
    finally:
        silent.close()
    with pytest.raises(ClockError, match="not synchronised"):
        query(ntp(0.0, stratum=0).address)
    with pytest.raises(ClockError, match="not a server's answer"):
        query(ntp(0.0, mode=3).address)
    with pytest.raises(ClockError, match="not to this request"):
        query(ntp(0.0, echo=False).address)


def test_server_addresses_are_parsed_and_checked_with_the_config(tmp_path):
    assert host_port("time.hospital.example") == ("time.hospital.example", 123)
    assert host_port("10.0.0.1:1123") == ("10.0.0.1", 1123)
    assert host_port("[::1]:1123") == ("::1", 1123) and host_port("::1") == ("::1", 123)
    for bad in ("host:0", "host:99999", "host:ntp", ":123"):
        with pytest.raises(ValueError):
            host_port(bad)
    cfg = write_config(tmp_path, state="sqlite:///x.db", jwks={"keys": [make_rsa_key()[1]]}, port=1)
    doc = yaml.safe_load(cfg.read_text())
    cfg.write_text(yaml.safe_dump(doc | {"clock": {"ntp_server": "time:99999"}}))
    with pytest.raises(ConfigError, match=r"clock\.ntp_server"):
        load_config(cfg)


def test_serve_refuses_to_start_with_a_skewed_clock(ntp, trained_bundle, tmp_path):
    server = ntp(120.0)
    cfg = write_config(tmp_path, state=f"sqlite:///{tmp_path / 'state.db'}", jwks={"keys": [make_rsa_key()[1]]},
                       port=8080)
    cfg.write_text(yaml.safe_dump(yaml.safe_load(cfg.read_text()) | {"clock": {"ntp_server": server.address}}))
    port = str(free_port())  # a subprocess with a time limit: a service that started anyway fails the test
    res = subprocess.run([sys.executable, "-m", "careloop.cli", "serve", "--model", str(trained_bundle), "--config",
                          str(cfg), "--port", port], capture_output=True, text=True, timeout=120)
    text = " ".join((res.stdout + res.stderr).split())
    assert res.returncode == 2 and 119_950 < _behind_ms(text) < 120_050, text
    assert "Traceback" not in text
    assert server.requests >= 1 and not (tmp_path / "state.db").exists()
