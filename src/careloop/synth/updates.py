"""Nightly incremental exports after the Bulk export: the new versions and resends a `_since` feed carries.

A hospital loads its full Bulk export once, then each night the resources created or changed since the last
export. Those nights carry new versions of resources already loaded (with `meta.versionId` and
`meta.lastUpdated`), and resources sent again unchanged where export windows overlap; and a night's export can
arrive late, after a newer one. `write_updates` writes two such nights after the Bulk export in `ndjson/`:

- `updates/day-1/`: patients who moved (a new address and phone) as version 2; final lab results withdrawn as
  version 2 (status `entered-in-error`, as a laboratory does when a result was filed against the wrong
  specimen); Encounters sent again unchanged.
- `updates/day-2/`: some of the patients who moved move again (version 3); other Encounters sent again.

Loading day 2 before day 1 is the stale-export case: day 1's version 2 of a patient who moved twice must not undo
version 3 (`careloop.ingest.versions`). Who changes is decided by a hash of (seed, id), so the exports do not depend
on the worker count, and the Bulk export is the same with or without them.
"""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import orjson

from careloop.synth.world import build_world

MOVED = 0.03  # share of patients with a new address on day 1
MOVED_AGAIN = 1 / 3  # share of those who move again on day 2
WITHDRAWN = 0.003  # share of final lab results withdrawn on day 1
RESENT = 0.01  # share of Encounters sent again unchanged, each night
_STREETS = ("Maple Ave", "Cedar St", "Harbor Rd", "Mill St", "Orchard Ln", "Union St", "Prospect Hill Rd")
_ID = re.compile(rb'"id":"([^"]+)"')


def share(seed: int, what: str, rid: str) -> float:
    """A uniform number in [0, 1) fixed by (seed, what, id): who changes, independent of order and workers."""
    h = hashlib.blake2b(f"{seed}:{what}:{rid}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2**64


def _lines(path: Path) -> Iterator[bytes]:
    if path.exists():
        with gzip.open(path) as fh:
            yield from fh


def _first_id(line: bytes) -> str:
    m = _ID.search(line)
    return m.group(1).decode() if m else ""


def _stamp(meta: dict | None, version: int, when: dt.datetime) -> dict:
    return {**(meta or {}), "versionId": str(version), "lastUpdated": when.isoformat().replace("+00:00", "Z")}


def _moved(res: dict, version: int, when: dt.datetime, zips: dict[str, tuple[str, ...]], seed: int) -> dict:
    """The patient at a new home address in the same town (a zip of the town), with a new phone number."""
    u = share(seed, f"move{version}", res["id"])
    addr = dict((res.get("address") or [{}])[0])
    town = zips.get(addr.get("city", ""), ())
    others = [z for z in town if z != addr.get("postalCode")] or list(town)
    addr["line"] = [f"{1 + int(u * 997)} {_STREETS[int(u * 7919) % len(_STREETS)]}"]
    if others:
        addr["postalCode"] = others[int(u * 7877) % len(others)]
    phones = [dict(t) for t in res.get("telecom") or []]
    for t in phones:
        if t.get("system") == "phone" and isinstance(t.get("value"), str) and len(t["value"]) >= 4:
            t["value"] = t["value"][:-4] + f"{int(u * 9973) % 10000:04d}"
    return {**res, "meta": _stamp(res.get("meta"), version, when), "address": [addr, *res["address"][1:]],
            "telecom": phones}


def write_updates(ndjson: Path, out: Path, *, seed: int, after: dt.date) -> dict[str, Counter]:
    """Write `out/day-1/` and `out/day-2/` from the Bulk export in `ndjson` (written on `after`); return, per day,
    how many resources of each change it holds."""
    zips = {s.city: s.zips for s in build_world(seed).sites}
    night = dt.datetime.combine(after, dt.time(2, 0), tzinfo=dt.UTC)
    day1, day2 = night, night + dt.timedelta(days=1)
    files: dict[str, dict[str, list[bytes]]] = {"day-1": {}, "day-2": {}}
    counts: dict[str, Counter] = {"day-1": Counter(), "day-2": Counter()}

    def put(day: str, rtype: str, what: str, body: bytes) -> None:
        files[day].setdefault(rtype, []).append(body)
        counts[day][what] += 1

    for line in _lines(ndjson / "Patient.ndjson.gz"):
        rid = _first_id(line)
        if share(seed, "move", rid) >= MOVED:
            continue
        res = orjson.loads(line)
        if not res.get("address"):
            continue
        put("day-1", "Patient", "Patient moved (version 2)", orjson.dumps(_moved(res, 2, day1, zips, seed)))
        if share(seed, "move-again", rid) < MOVED_AGAIN:
            put("day-2", "Patient", "Patient moved again (version 3)", orjson.dumps(_moved(res, 3, day2, zips, seed)))
    for line in _lines(ndjson / "Observation.ndjson.gz"):
        if b'"code":"laboratory"' not in line or b'"status":"final"' not in line:
            continue
        if share(seed, "withdraw", _first_id(line)) >= WITHDRAWN:
            continue
        res = orjson.loads(line)
        res.pop("interpretation", None)
        res.update(status="entered-in-error", meta=_stamp(res.get("meta"), 2, day1))
        put("day-1", "Observation", "lab result withdrawn (version 2, entered-in-error)", orjson.dumps(res))
    for line in _lines(ndjson / "Encounter.ndjson.gz"):
        u = share(seed, "resend", _first_id(line))
        if u < 2 * RESENT:
            put("day-1" if u < RESENT else "day-2", "Encounter", "Encounter sent again unchanged", line.rstrip(b"\n"))
    for day, by_type in files.items():
        (out / day).mkdir(parents=True, exist_ok=True)
        for rtype, bodies in by_type.items():
            with gzip.GzipFile(out / day / f"{rtype}.ndjson.gz", "wb", compresslevel=3, mtime=0) as fh:
                fh.write(b"\n".join(bodies) + b"\n")
    return counts


__all__ = ["write_updates"]
