"""The floors `bench/serve.py` runs beside careloop, under the same load (same wrk script, same signed calls, same
worker processes): how fast a Python ASGI server can answer these calls while doing (almost) nothing.

- `read`: uvicorn (httptools, uvloop, as `careloop serve` runs) reads the whole request, body included, and answers
  `{"cards": []}` without looking at it: the HTTP floor.
- `decode`: the same, after decoding the hook request and every prefetched resource into the ingest's typed
  structs (msgspec, the fastest decoder measured here; what any service must do before it can read a feature).

    python -m uvicorn bench._floor:read --workers 2 --port P
"""

from __future__ import annotations

import msgspec

from careloop.ingest import model as M

_ANSWER = b'{"cards":[]}'
_DISCOVERY = b'{"services":[]}'
_HEADERS = [(b"content-type", b"application/json")]


class _Entry(msgspec.Struct):
    resource: M.Resource | None = None


class _Bundle(msgspec.Struct):
    entry: list[_Entry] = []


class _Call(msgspec.Struct):
    prefetch: dict[str, msgspec.Raw] = {}


_call = msgspec.json.Decoder(_Call)
_resource = msgspec.json.Decoder(M.Resource)
_bundle = msgspec.json.Decoder(_Bundle)


def _decode(body: bytes) -> int:
    """Every prefetched resource decoded, as the service's fast path does; how many."""
    n = 0
    for key, raw in _call.decode(body).prefetch.items():
        if key == "patient":
            _resource.decode(raw)
            n += 1
        else:
            n += sum(e.resource is not None for e in _bundle.decode(raw).entry)
    return n


def _app(work):
    async def app(scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        chunks = []
        while True:
            msg = await receive()
            chunks.append(msg.get("body", b""))
            if not msg.get("more_body"):
                break
        if scope["method"] == "POST":
            work(b"".join(chunks))
        answer = _ANSWER if scope["method"] == "POST" else _DISCOVERY
        await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
        await send({"type": "http.response.body", "body": answer})

    return app


read = _app(lambda body: None)
decode = _app(_decode)
