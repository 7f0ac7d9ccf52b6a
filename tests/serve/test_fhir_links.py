"""Reading the EHR's FHIR server safely: the access token goes only to that server (a `next` link elsewhere is not
followed), the whole read keeps one deadline, an odd answer leaves the key out (the call defers, never a 500), and
a prefetched page of a search is recognised as a page. The servers are real HTTP servers on loopback."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import msgspec
import orjson
import pytest

from careloop.serve.features import PREFETCH, collect, fetch_prefetch, fhir_tls, is_page, on_server

TOKEN = "granted-access-token-abcdef0123456789"
PID = "p1"
PATIENT = {"resourceType": "Patient", "id": PID, "birthDate": "1950-01-01", "gender": "female"}


def _encounter(i: int) -> dict:
    return {"resourceType": "Encounter", "id": f"e{i}", "status": "finished",
            "subject": {"reference": f"Patient/{PID}"},
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
            "period": {"start": f"2024-0{i}-01T00:00:00Z", "end": f"2024-0{i}-03T00:00:00Z"}}


class _Server(http.server.ThreadingHTTPServer):
    request_queue_size = 64  # the keys are read at once: socketserver's backlog of 5 would drop connects (1 s retry)


@contextmanager
def fhir_server(answer: Callable[[str, str], tuple[int, object]], *, set_cookie: str | None = None,
                cookies: list | None = None) -> Iterator[tuple[str, list]]:
    """A FHIR server on loopback answering `answer(base, path)`; yields its base URL and the (path, bearer) seen.
    With `set_cookie` every answer sets that cookie, and `cookies` collects the Cookie header of each request."""
    seen: list[tuple[str, str | None]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append((self.path, self.headers.get("Authorization")))
            if cookies is not None:
                cookies.append(self.headers.get("Cookie"))
            status, body = answer(base, self.path)
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            self.send_response(status)
            if set_cookie:
                self.send_header("Set-Cookie", set_cookie)
            self.send_header("Content-Type", "application/fhir+json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = _Server(("127.0.0.1", 0), Handler)
    base = f"http://127.0.0.1:{server.server_address[1]}/fhir"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield base, seen
    finally:
        server.shutdown()
        server.server_close()


def _bundle(entries: list[dict], next_url: str | None = None, total: int | None = None) -> dict:
    b: dict = {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": r} for r in entries]}
    if next_url:
        b["link"] = [{"relation": "next", "url": next_url}]
    if total is not None:
        b["total"] = total
    return b


def test_pages_on_the_server_are_followed_and_a_link_elsewhere_never_gets_the_token():
    with fhir_server(lambda base, path: (200, _bundle([]))) as (elsewhere, elsewhere_seen):
        def answer(base: str, path: str) -> tuple[int, object]:
            if path.startswith("/fhir/Encounter?patient="):
                return 200, _bundle([_encounter(1)], f"{base}/Encounter?page=2")
            if path == "/fhir/Encounter?page=2":
                return 200, _bundle([_encounter(2)], f"{base}/Encounter?page=3")
            if path == "/fhir/Encounter?page=3":
                return 200, _bundle([_encounter(3)])
            if path.startswith("/fhir/Condition"):
                return 200, _bundle([], f"{elsewhere}/Condition?page=2")  # another origin: not followed
            if path.startswith("/fhir/Procedure"):
                return 200, _bundle([], base.replace("/fhir", "/admin") + "/x")  # off the base path: not followed
            return 200, _bundle([])

        with fhir_server(answer) as (base, seen):
            got = fetch_prefetch(base, TOKEN, PID, ["encounters", "conditions", "procedures", "coverage"])
    assert [e["resource"]["id"] for e in got["encounters"]["entry"]] == ["e1", "e2", "e3"]
    assert "conditions" not in got and "procedures" not in got  # the rest cannot be had: left out, the call defers
    assert got["coverage"]["entry"] == []
    assert elsewhere_seen == []
    assert {auth for _, auth in seen} == {f"Bearer {TOKEN}"}
    assert not any(p.startswith("/admin") for p, _ in seen)


@pytest.mark.parametrize("url, ok", [
    ("http://127.0.0.1:5100/fhir/Encounter?page=2", True),
    ("http://127.0.0.1:5100/fhir", True),
    ("http://127.0.0.1:51007/fhir/Encounter", False),
    ("https://127.0.0.1:5100/fhir/Encounter", False),
    ("http://127.0.0.1:5100/fhirx/Encounter", False),
    ("http://127.0.0.1:5100/admin", False),
    ("http://user:pw@127.0.0.1:5100/fhir/Encounter", False),
    ("http://127.0.0.1.evil.example:5100/fhir/Encounter", False),
    ("/fhir/Encounter?page=2", False),
    ("http://127.0.0.1:5100/fhir/../admin", False),
    ("http://127.0.0.1:5100/fhir/..;/admin", False),  # Java servers strip the ";" parameter: "/fhir/../admin"
    ("http://127.0.0.1:5100/fhir/%2e%2e/admin", False),
    ("http://127.0.0.1:5100/fhir/..%2fadmin", False),
    ("http://127.0.0.1:5100/fhir/..\\admin", False),  # some servers take a backslash for a slash
    ("http://127.0.0.1:5100/fhir/%5c..%5cadmin", False),
    ("http://127.0.0.1:5100/fhir/%252e%252e/admin", False),  # decoded twice by a lenient proxy: "/fhir/../admin"
    ("http://127.0.0.1:5100/fhir/..%252fadmin", False),
    ("http://127.0.0.1:5100/fhir/%255c..%255cadmin", False),
    ("http://127.0.0.1:5100/fhir/\uff0e\uff0e/admin", False),  # fullwidth dots, which some servers fold to "."
    ("http://127.0.0.1:5100/fhir/%c0%ae%c0%ae/admin", False),  # an overlong UTF-8 dot
    ("http://127.0.0.1:5100/fhir/..%00/admin", False),
    ("http://127.0.0.1:5100/fhir/..%20/admin", False),  # IIS trims a trailing space
    ("http://127.0.0.1:5100/fhir/..%09/admin", False),
    ("http://127.0.0.1:5100/fhir/Patient/p1/$everything?_count=50", True),
    ("http://127.0.0.1:5100/fhir?_getpages=abc&_getpagesoffset=20", True),  # HAPI's paging links
    ("http://127.0.0.1:5100/fhir/Encounter;jsessionid=1?page=2", True),
    ("http://127.0.0.1:5100/fhir/Encounter?page=2&q=..", True),  # dots in the query are data, not a path
])
def test_on_server_means_same_origin_and_under_the_base(url, ok):
    assert on_server(url, "http://127.0.0.1:5100/fhir") is ok


def test_the_keys_are_read_at_once_and_a_slow_one_costs_one_deadline():
    """Seven searches of 0.4 s each take 0.4 s, not 2.8 s; one that would take 3 s is cut off at the deadline, and
    the keys read by then are kept."""
    def slow(base: str, path: str) -> tuple[int, object]:
        time.sleep(3.0 if path.startswith("/fhir/Observation") else 0.4)
        return 200, PATIENT if path.startswith("/fhir/Patient") else _bundle([])

    with fhir_server(slow) as (base, _):
        t0 = time.perf_counter()
        got = fetch_prefetch(base, TOKEN, PID, [k for k in PREFETCH if k != "observations"], timeout=2.0)
        took = time.perf_counter() - t0
        assert set(got) == set(PREFETCH) - {"observations"} and took < 1.2, took
        t0 = time.perf_counter()
        got = fetch_prefetch(base, TOKEN, PID, list(PREFETCH), timeout=1.0)
        took = time.perf_counter() - t0
    assert set(got) == set(PREFETCH) - {"observations"}
    assert 1.0 <= took < 1.3, took


@pytest.mark.parametrize("body", [b"[1, 2]", b"not json", {"resourceType": "Bundle", "link": ["next"], "entry": 3},
                                  {"resourceType": "Bundle", "entry": [{"resource": _encounter(1)}],
                                   "link": [{"relation": "next", "url": 7}]}])
def test_an_odd_answer_leaves_its_key_out_without_an_error(body):
    with fhir_server(lambda base, path: (200, body)) as (base, _):
        got = fetch_prefetch(base, TOKEN, PID, ["encounters"])
    if isinstance(body, dict) and isinstance(body.get("link"), list) and body["link"] == ["next"]:
        assert got["encounters"]["entry"] == []  # a link list without a next link: the search is what was sent
    else:
        assert "encounters" not in got


def test_a_failed_later_page_leaves_the_key_out():
    def answer(base: str, path: str) -> tuple[int, object]:
        if path == "/fhir/Encounter?page=2":
            return 500, {"resourceType": "OperationOutcome"}
        return 200, _bundle([_encounter(1)], f"{base}/Encounter?page=2")

    with fhir_server(answer) as (base, _):
        assert fetch_prefetch(base, TOKEN, PID, ["encounters"]) == {}


@pytest.mark.parametrize("bundle, page", [
    (_bundle([_encounter(1)]), False),
    (_bundle([_encounter(1)], next_url="http://x/fhir/Encounter?page=2"), True),
    (_bundle([_encounter(1)], total=1), False),
    (_bundle([_encounter(1)], total=2), True),
    ({**_bundle([_encounter(1)], total=1), "entry": [{"resource": _encounter(1), "search": {"mode": "match"}},
                                                    {"resource": PATIENT, "search": {"mode": "include"}}]}, False),
    ({**_bundle([_encounter(1)], total=2), "entry": [{"resource": _encounter(1), "search": {"mode": "match"}},
                                                    {"resource": PATIENT, "search": {"mode": "include"}}]}, True),
    ({**_bundle([_encounter(1)]), "link": [{"relation": "self", "url": "http://x"}]}, False),
    ({**_bundle([_encounter(1)]), "link": [{"relation": "first", "url": "http://x"}]}, False),
    ({**_bundle([_encounter(1)]), "link": [{"relation": "previous", "url": "http://x"}]}, True),  # the last page
    ({**_bundle([_encounter(1)]), "link": [{"relation": "prev", "url": "http://x"}]}, True),
    ({**_bundle([_encounter(1)]), "total": "2"}, True),  # a lax server's total is read as meant
    ({**_bundle([_encounter(1)]), "total": 2.0}, True),
    ({**_bundle([_encounter(1)]), "total": "1"}, False),
    ({**_bundle([_encounter(1)]), "total": "many"}, False),
])
def test_a_page_of_a_search_is_recognised_parsed_or_raw(bundle, page):
    assert is_page(bundle.get("link"), bundle.get("total"), bundle["entry"]) is page
    for value in (bundle, msgspec.Raw(orjson.dumps(bundle))):  # the fast path and the general one agree
        pre = collect({"patient": PATIENT, "encounters": value}, PID)
        assert pre.partial == (["encounters"] if page else [])
        assert [ident for ident, _ in pre.used] == [("Patient", PID), ("Encounter", "e1")]


def test_a_server_that_drips_its_answer_is_abandoned_at_the_deadline():
    """httpx's timeout bounds each network wait, not the body: a page sent a few bytes at a time would hold the
    fetching thread for as long as the server likes, were the body not read against the clock."""

    class Drip(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            data = json.dumps(_bundle([])).encode() + b" " * 400
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            try:
                for i in range(len(data)):
                    self.wfile.write(data[i:i + 1])
                    self.wfile.flush()
                    time.sleep(0.02)  # the whole answer would take ~9 s
            except OSError:
                pass

        def log_message(self, *args):
            pass

    server = _Server(("127.0.0.1", 0), Drip)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        t0 = time.perf_counter()
        got = fetch_prefetch(f"http://127.0.0.1:{server.server_address[1]}/fhir", TOKEN, PID, ["encounters"],
                             timeout=0.8)
        took = time.perf_counter() - t0
    finally:
        server.shutdown()
        server.server_close()
    assert got == {} and took < 1.2, took


def test_a_page_too_large_or_nested_too_deeply_leaves_its_key_out():
    deep = b"[" * 100_000 + b"]" * 100_000
    big = orjson.dumps(_bundle([_encounter(1)] * 200))

    def answer(base: str, path: str) -> tuple[int, object]:
        return 200, (deep if path.startswith("/fhir/Encounter") else big if path.startswith("/fhir/Condition")
                     else _bundle([]))

    with fhir_server(answer) as (base, _):
        got = fetch_prefetch(base, TOKEN, PID, ["encounters", "conditions", "procedures"], max_bytes=len(big) - 1)
    assert set(got) == {"procedures"}


def test_a_search_read_short_of_its_total_stays_a_page():
    """The server says 5 matches but its pages hold 2 (a page lost, or the search changed between pages): the rebuilt
    Bundle keeps the total, so the call defers on it rather than scoring part of the record."""
    def answer(base: str, path: str) -> tuple[int, object]:
        if path == "/fhir/Encounter?page=2":
            return 200, _bundle([_encounter(2)])
        return 200, _bundle([_encounter(1)], f"{base}/Encounter?page=2", total=5)

    with fhir_server(answer) as (base, _):
        got = fetch_prefetch(base, TOKEN, PID, ["encounters"])
    assert [e["resource"]["id"] for e in got["encounters"]["entry"]] == ["e1", "e2"]
    assert collect({"patient": PATIENT, **got}, PID).partial == ["encounters"]
    with fhir_server(lambda base, path: answer(base, path) if "page=2" in path else
                     (200, _bundle([_encounter(1)], f"{base}/Encounter?page=2", total=2))) as (base, _):
        got = fetch_prefetch(base, TOKEN, PID, ["encounters"])
    assert collect({"patient": PATIENT, **got}, PID).partial == []


def test_the_tls_context_is_built_once_not_per_call(monkeypatch):
    """Loading the CA bundle takes ~35 ms of CPU on the event loop: one context serves every read."""
    import ssl

    loads = []
    real = ssl.SSLContext.load_verify_locations
    monkeypatch.setattr(ssl.SSLContext, "load_verify_locations", lambda self, *a, **k: (loads.append(1),
                                                                                         real(self, *a, **k))[1])
    fhir_tls.cache_clear()
    with fhir_server(lambda base, path: (200, _bundle([]))) as (base, _):
        for _ in range(3):
            assert fetch_prefetch(base, TOKEN, PID, ["encounters"]) == {"encounters": _bundle([])}
    assert len(loads) == 1


def test_the_pages_of_one_call_together_are_capped():
    """Each page is parsed on the event loop: many pages just under the page cap are refused once their sum passes
    `max_total_bytes` (the key whose page crosses it is left out; those read before are kept)."""
    page = orjson.dumps(_bundle([_encounter(1)] * 50))

    with fhir_server(lambda base, path: (200, page)) as (base, _):
        keys = ["encounters", "conditions", "procedures", "medications"]
        got = fetch_prefetch(base, TOKEN, PID, keys, max_bytes=len(page), max_total_bytes=len(page) * 4)
        assert set(got) == set(keys)
        got = fetch_prefetch(base, TOKEN, PID, keys, max_bytes=len(page), max_total_bytes=len(page) * 2)
    assert len(got) < len(keys)


def _counting_answer() -> tuple[Callable[[str, str], tuple[int, object]], dict]:
    """A FHIR server's answer that takes 50 ms, and the most reads it had in flight at once (`state["most"]`)."""
    state = {"now": 0, "most": 0}
    lock = threading.Lock()

    def answer(base: str, path: str) -> tuple[int, object]:
        with lock:
            state["now"] += 1
            state["most"] = max(state["most"], state["now"])
        time.sleep(0.05)
        with lock:
            state["now"] -= 1
        return 200, PATIENT if path.startswith("/fhir/Patient") else _bundle([])

    return answer, state


def test_a_shared_client_bounds_the_reads_in_flight():
    """The service reads through one client per process: however many calls arrive without prefetch, the EHR's
    FHIR server sees at most the client's connection limit at once."""
    import asyncio

    import httpx

    from careloop.serve.features import read_prefetch

    answer, state = _counting_answer()

    async def calls(base: str) -> list:
        async with httpx.AsyncClient(limits=httpx.Limits(max_connections=3)) as client:
            return await asyncio.gather(*(read_prefetch(base, TOKEN, PID, list(PREFETCH), timeout=5, client=client)
                                          for _ in range(5)))

    with fhir_server(answer) as (base, seen):
        results = asyncio.run(calls(base))
    assert all(set(r.values) == set(PREFETCH) and not r.unread and not r.failed for r in results)
    assert len(seen) == 5 * len(PREFETCH) and state["most"] == 3


def test_a_search_unfinished_at_the_deadline_is_named_as_unread_not_as_failed():
    import asyncio

    from careloop.serve.features import read_prefetch

    def answer(base: str, path: str) -> tuple[int, object]:
        if path.startswith("/fhir/Observation"):
            time.sleep(1.5)
        if path.startswith("/fhir/Condition"):
            return 500, {"resourceType": "OperationOutcome"}
        return 200, PATIENT if path.startswith("/fhir/Patient") else _bundle([])

    with fhir_server(answer) as (base, _):
        got = asyncio.run(read_prefetch(base, TOKEN, PID, list(PREFETCH), timeout=0.5))
    assert got.unread == ["observations"]
    assert got.failed == {"conditions": "HTTP 500"}  # failed, with why: not unread
    assert set(got.values) == set(PREFETCH) - {"observations", "conditions"}


def test_the_blocking_form_refuses_to_run_inside_an_event_loop():
    import asyncio
    import warnings

    async def inside() -> None:
        fetch_prefetch("http://127.0.0.1:9/fhir", TOKEN, PID, ["encounters"])

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "coroutine was never awaited" either
        with pytest.raises(RuntimeError, match="await read_prefetch"):
            asyncio.run(inside())


def test_a_cookie_the_fhir_server_sets_is_never_sent_back():
    """The service's client is shared by every call of a process: a session cookie a gateway set while reading one
    patient's record for one EHR must not ride along with the next call's reads."""
    import asyncio

    from careloop.serve.features import new_fhir_client, read_prefetch

    cookies_seen: list[str | None] = []
    answer = lambda base, path: (200, PATIENT if path.startswith("/fhir/Patient") else _bundle([]))  # noqa: E731

    async def two_calls(base: str) -> None:
        async with new_fhir_client(4) as client:
            for _ in range(2):
                got = await read_prefetch(base, TOKEN, PID, ["patient", "encounters"], client=client)
                assert set(got.values) == {"patient", "encounters"}
            assert not list(client.cookies.jar)

    with fhir_server(answer, set_cookie="SESSION=tenant-a-patient-p1; Path=/", cookies=cookies_seen) as (base, _):
        asyncio.run(two_calls(base))
    assert cookies_seen == [None] * 4


@pytest.mark.parametrize("answer, why", [
    (lambda base, path: (403, {"resourceType": "OperationOutcome"}), "HTTP 403"),
    (lambda base, path: (200, b"[1, 2]"), "not a FHIR resource"),
    (lambda base, path: (200, b"{not json"), "not JSON (or nested too deeply)"),
    (lambda base, path: (200, _bundle([_encounter(1)], "http://elsewhere.example/fhir/Encounter?page=2")),
     "a next link off the FHIR server"),
    (lambda base, path: (200, _bundle([_encounter(1)], f"{base}/Encounter?page=2")), "more than 20 pages"),
])
def test_a_key_that_cannot_be_had_says_why(answer, why):
    """Operators tell a misconfiguration (a scope not granted, a search parameter the server lacks) from slowness
    by the reason the audit record and the card give."""
    import asyncio

    from careloop.serve.features import read_prefetch

    with fhir_server(answer) as (base, _):
        got = asyncio.run(read_prefetch(base, TOKEN, PID, ["encounters"]))
    assert got.failed == {"encounters": why} and not got.values and not got.unread


def _observation(i: int, code: str) -> dict:
    return {"resourceType": "Observation", "id": f"o{i}", "status": "final", "subject": {"reference": f"Patient/{PID}"},
            "code": {"coding": [{"system": "http://loinc.org", "code": code}]}, "valueQuantity": {"value": i}}


NARROW = {"observations": "Observation?patient={{context.patientId}}&combo-code=http://loinc.org|2160-0"}
WIDE = {"observations": "Observation?patient={{context.patientId}}"}


REFUSED = {"resourceType": "OperationOutcome",
           "issue": [{"severity": "error", "code": "not-supported", "diagnostics": "Unknown parameter combo-code"}]}


@pytest.mark.parametrize("narrow, broad, expect", [
    (400, 200, "widened"),  # no combo-code: the whole Observation search instead
    (400, 500, "HTTP 400, and HTTP 500 for the broader search"),
    (500, 200, "HTTP 500"),  # only a 400 (the search as written is refused) is worth a broader search
])
def test_a_search_the_server_refuses_is_read_through_the_broader_one(narrow, broad, expect):
    """A FHIR server without `combo-code` (HAPI answers an unknown search parameter with 400) still gives the
    Observations: the broader search is a superset the mapping filters; each other failure keeps its reason."""
    import asyncio

    from careloop.serve.features import read_prefetch

    everything = [_observation(1, "2160-0"), _observation(2, "8867-4")]

    def answer(base: str, path: str) -> tuple[int, object]:
        if "combo-code" in path:
            return narrow, REFUSED
        return broad, _bundle(everything) if broad == 200 else REFUSED

    with fhir_server(answer) as (base, seen):
        got = asyncio.run(read_prefetch(base, TOKEN, PID, ["observations"], templates=NARROW, wider=WIDE))
        without = asyncio.run(read_prefetch(base, TOKEN, PID, ["observations"], templates=NARROW))
    if expect == "widened":
        assert got.widened == ["observations"] and not got.failed
        assert [e["resource"]["id"] for e in got.values["observations"]["entry"]] == ["o1", "o2"]
        assert [p for p, _ in seen[:2]] == [f"/fhir/Observation?patient={PID}&combo-code=http://loinc.org|2160-0",
                                           f"/fhir/Observation?patient={PID}"]
    else:
        assert got.failed == {"observations": expect} and not got.values and not got.widened
    assert without.failed == {"observations": f"HTTP {narrow}"} and not without.widened


def test_the_service_bounds_its_reads_to_one_fhir_server_by_its_configuration(trained_bundle, tmp_path):
    """`fhir_connections` (per worker process) is what the EHR's FHIR server sees at most: six calls at once without
    prefetch, a limit of 2, and never a third read in flight."""
    import asyncio

    import yaml

    from careloop.serve.app import HookRequest, Service
    from careloop.serve.config import load_config
    from tests.fhir_server.harness import make_rsa_key

    answer, state = _counting_answer()

    with fhir_server(answer) as (base, seen):
        _, jwk = make_rsa_key()
        (tmp_path / "service.yaml").write_text(yaml.safe_dump({
            "trusted_clients": [{"iss": base, "jwks": {"keys": [jwk]}}], "fhir_connections": 2,
            "state": f"sqlite:///{tmp_path / 'state.db'}"}))
        service = Service(trained_bundle, load_config(tmp_path / "service.yaml"))
        req = HookRequest.decode(json.dumps({
            "hook": "encounter-discharge", "hookInstance": "h-1", "context": {"patientId": PID, "userId": "u"},
            "fhirServer": base, "fhirAuthorization": {"access_token": TOKEN, "token_type": "Bearer",
                                                      "expires_in": 300, "scope": "patient/*.read",
                                                      "subject": "careloop"}}).encode())

        async def calls() -> list:
            try:
                return await asyncio.gather(*(service.fetch(req, list(service.prefetch), 10) for _ in range(6)))
            finally:
                await service.close_fhir_clients()

        try:
            results = asyncio.run(calls())
        finally:
            service.close()
    assert all(set(r.values) == set(service.prefetch) and not r.failed for r in results)
    assert len(seen) == 6 * len(service.prefetch) and state["most"] == 2
