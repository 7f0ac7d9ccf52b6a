"""The feature set for one patient at a time, in plain Python: what the CDS Hooks service runs at the bedside.

`extract` (engine.py) compiles a feature set to SQL for a whole cohort; at the bedside there is one patient with a
few hundred events, and a SQL engine's fixed cost per query (parsing, binding, registering tables: tens of
milliseconds) is most of a request's time budget. `StayFeatures` evaluates the same declarative spec with the
same semantics, row by row, in well under a millisecond:

- an event counts when its time is at or before the index time (a static fact, with no time, always counts);
- windows: `stay` from the admission of the index stay, a duration back from the index time (exclusive start),
  `all` the whole record;
- `last`/`first` take the latest/earliest event, ties broken by the larger/smaller value (the SQL's
  `max_by(v, (t, v))`), `latest_code` by the larger code;
- utilisation counts other encounters that started before the index admission (ended before it, for the
  counts; ended by it, for days since the last discharge);
- the index stay's discharge ward and principal diagnosis are known only once it has ended by the index time;
- the comorbidity indices and the LACE and HOSPITAL scores come from the very functions `extract` calls.

The two are one definition with two evaluators, and the conformance test (tests/features/test_rows.py) holds them
equal to the last digit on every index stay of a synthetic hospital, feature by feature.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from careloop.features.comorbidity import charlson_index, van_walraven_score
from careloop.features.engine import stay_score
from careloop.features.spec import Feature, FeatureSet, window_us
from careloop.tasks.cohort import US_PER_DAY

NO_TIME = -9223372036854775807  # a static fact's time in the SQL (it precedes everything)
_YEAR_US = US_PER_DAY * 365.25
# positions in an event tuple, in `careloop.contracts.EVENTS` order (as `careloop.ingest.mapping.Batch.ev` holds them)
_TIME, _CODE, _NUM, _TEXT, _SOURCE = 1, 2, 3, 4, 9


@dataclass(frozen=True)
class Stay:
    """The index stay: its encounter row (as `contracts.ENCOUNTERS`, times in UTC microseconds) and the index time."""

    encounter_id: str
    admit_us: int
    index_us: int
    end_us: int | None = None
    encounter_class: str | None = None
    priority: str | None = None
    admit_source: str | None = None
    location_ref: str | None = None
    reason_code: str | None = None
    diagnosis_ref: str | None = None  # Encounter.diagnosis's principal Condition (`Condition/<id>`)


def diagnosis_code(events: Sequence[tuple], ref: str | None, index_us: int) -> str | None:
    """The code of the Condition `ref` among the record's events recorded by `index_us`: its ICD-10-CM code (the
    smallest, if several), else its smallest code; None when there is none (as `engine.diagnosis_sql`)."""
    if not ref or not ref.startswith("Condition/"):
        return None
    rid = ref[10:]
    codes = [e[2] for e in events if e[9] == "Condition" and e[10] == rid and e[1] is not None and e[1] <= index_us]
    icd = [c for c in codes if c.startswith("ICD10CM/")]
    return min(icd) if icd else min(codes) if codes else None


@dataclass
class Record:
    """One patient's data in the store's shapes: event tuples (contracts.EVENTS order, time in microseconds),
    encounter rows (dicts with `encounter_id`, `class`, `start`, `end` in microseconds), the birth date as days
    since 1970, and Location names by id (the directory)."""

    events: Sequence[tuple]
    encounters: Sequence[Mapping[str, Any]]
    birth_days: int | None = None
    locations: Mapping[str, str] = field(default_factory=dict)


class StayFeatures:
    """`StayFeatures(feature_set)(record, stay)` -> {column: value}, the columns of `extract` for one stay."""

    def __init__(self, fs: FeatureSet) -> None:
        self.fs = fs
        self.columns = fs.columns
        self.codes = {f.code for f in fs.features if f.code and f.kind in ("measurement", "latest_text")}
        prefixes = {f.prefix for f in fs.features if f.prefix}
        if any(f.kind == "comorbidity" for f in fs.features):
            prefixes.add("ICD10CM/")
        self.prefixes = sorted(prefixes)
        self.sources = {f.source for f in fs.features if f.source}
        self.plan = [(f, _Window(f)) for f in fs.features]
        self._prefixes_of: dict[str, tuple[str, ...]] = {}  # code -> the feature prefixes it starts with
        self._reach: dict[tuple[str, str], tuple[bool, bool, int | None]] = {}

    def prefixes_of(self, code: str) -> tuple[str, ...]:
        hit = self._prefixes_of.get(code)
        if hit is None:
            if len(self._prefixes_of) > 100_000:
                self._prefixes_of.clear()
            hit = self._prefixes_of[code] = tuple(p for p in self.prefixes if code.startswith(p))
        return hit

    def reach(self, code: str, source: str) -> tuple[bool, bool, int | None]:
        """How far back any feature reads an event with this code from this resource type: (read at all, from the
        admission of the stay, look-back in microseconds or None for the whole record)."""
        key = (code, source)
        hit = self._reach.get(key)
        if hit is None:
            wins = [w for f, w in self.plan
                    if (f.code == code and f.kind in ("measurement", "latest_text"))
                    or (f.prefix and code.startswith(f.prefix))
                    or (f.kind == "comorbidity" and code.startswith("ICD10CM/"))
                    or (f.source == source)]
            if not wins:
                hit = (False, False, None)
            elif any(not w.stay and w.back is None for w in wins):
                hit = (True, False, None)
            elif all(w.stay for w in wins):
                hit = (True, True, None)
            else:
                hit = (True, any(w.stay for w in wins), max(w.back for w in wins if not w.stay))
            self._reach[key] = hit
        return hit

    def wants(self, codes: list[str], source: str, t: int | None, stay: Stay) -> bool:
        """Could an event of `source` with any of these codes at time `t` change a feature of `stay`? (False lets
        the service skip mapping it; the conformance and bedside tests hold the features unchanged.)"""
        if t is None:
            return True  # the mapping will say what is wrong with it
        if t > stay.index_us:
            return False
        for code in codes:
            read, stay_window, back = self.reach(code, source)
            if not read:
                continue
            if not stay_window and back is None:
                return True
            if stay_window and t >= stay.admit_us:
                return True
            if back is not None and t > stay.index_us - back:
                return True
        return False

    def __call__(self, record: Record, stay: Stay) -> dict[str, Any]:
        index_us, admit_us = stay.index_us, stay.admit_us
        by_code: dict[str, list[tuple]] = {c: [] for c in self.codes}
        by_prefix: dict[str, list[tuple]] = {p: [] for p in self.prefixes}
        by_source: dict[str, list[int]] = {s: [] for s in self.sources}
        prefixes_of = self.prefixes_of
        for ev in record.events:
            t = ev[_TIME]
            if t is None:
                t = NO_TIME
            elif t > index_us:
                continue
            code = ev[_CODE]
            hit = by_code.get(code)
            if hit is not None:
                hit.append((t, ev[_NUM], ev[_TEXT]))
            for p in prefixes_of(code):
                by_prefix[p].append((t, code))
            src = by_source.get(ev[_SOURCE])
            if src is not None:
                src.append(t)
        out: dict[str, Any] = {}
        for f, win in self.plan:
            k = f.kind
            if k == "age":
                birth = record.birth_days
                out[f.name] = None if birth is None else (index_us - birth * US_PER_DAY) / _YEAR_US
            elif k == "length_of_stay":
                out[f.name] = (index_us - admit_us) / US_PER_DAY
            elif k == "emergent":
                out[f.name] = None if stay.priority is None else stay.priority in ("EM", "UR")
            elif k == "admit_source":
                out[f.name] = stay.admit_source
            elif k == "principal_diagnosis":
                out[f.name] = (diagnosis_code(record.events, stay.diagnosis_ref, index_us) or stay.reason_code) \
                    if _ended(stay) else None
            elif k == "static":
                n = len(f.prefix)
                out[f.name] = max((c[n:] for _, c in by_prefix[f.prefix]), default=None)
            elif k == "latest_code":
                n = len(f.prefix)
                best = max(((t, c) for t, c in by_prefix[f.prefix] if win.has(t, index_us, admit_us)), default=None)
                out[f.name] = None if best is None else best[1][n:]
            elif k == "latest_text":
                out[f.name] = _latest_text([(t, x) for t, _, x in by_code[f.code] if win.has(t, index_us, admit_us)])
            elif k == "distinct_codes":
                out[f.name] = float(len({c for t, c in by_prefix[f.prefix] if win.has(t, index_us, admit_us)}))
            elif k == "event_count":
                out[f.name] = float(sum(1 for t in by_source[f.source] if win.has(t, index_us, admit_us)))
            elif k == "comorbidity":
                codes = {c for _, c in by_prefix["ICD10CM/"]}
                out[f.name] = float((charlson_index if f.index == "charlson" else van_walraven_score)(codes))
            elif k == "measurement":
                vals = [(t, v) for t, v, _ in by_code[f.code] if v is not None and win.has(t, index_us, admit_us)]
                out.update(_measurement(f, vals, index_us))
            elif k == "encounter_count":
                out[f.name] = float(_encounter_count(f, record.encounters, stay))
            elif k == "days_since_discharge":
                out[f.name] = _days_since_discharge(f, record.encounters, stay)
        for f in self.fs.features:
            if f.kind == "score":
                location = record.locations.get(_location_id(stay.location_ref)) if _ended(stay) else None
                out[f.name] = stay_score(f.score, out, admit_us, index_us, stay.priority, location)  # type: ignore[arg-type]
        return {c: out[c] for c in self.columns}


class _Window:
    """A feature's window as a test on an event time."""

    __slots__ = ("back", "stay")

    def __init__(self, f: Feature) -> None:
        self.stay = f.window == "stay"
        self.back = window_us(f.window)

    def has(self, t: int, index_us: int, admit_us: int) -> bool:
        if self.stay:
            return t >= admit_us
        return True if self.back is None else t > index_us - self.back


def _ended(stay: Stay) -> bool:
    return stay.end_us is not None and stay.end_us <= stay.index_us


def _location_id(ref: str | None) -> str | None:
    """The key of `Record.locations` a stay's location reference is looked up by: the id of `Location/<id>`; a
    conditional reference (`Location?identifier=system|value`, as transaction Bundles write it) as written."""
    if not ref:
        return None
    return ref[len("Location/"):] if ref.startswith("Location/") else ref


def location_names(rows: Iterable[tuple[str | None, str | None, str | None, str | None, str | None]]
                   ) -> dict[str, str]:
    """`Record.locations` from directory rows (resource_type, resource_id, name, identifier_system,
    identifier_value): each Location's name by its id and by its conditional reference (of its identifiers), as
    `engine.index_sql` resolves both; an identifier two Locations share names the smaller name, as there."""
    out: dict[str, str] = {}
    for rtype, rid, name, system, value in rows:
        if rtype != "Location" or name is None:
            continue
        if rid is not None:
            out[rid] = name
        if system is not None and value is not None:
            key = f"Location?identifier={system}|{value}"
            out[key] = min(out[key], name) if key in out else name
    return out


def _latest_text(items: list[tuple[int, str | None]]) -> str | None:
    """`max_by(text, (t, text))` over the events with a text: the latest answer given; at the same time the larger
    text. An event without text (asked, no answer recorded) is not an answer (as `engine.events_sql`)."""
    given = [tx for tx in items if tx[1] is not None]
    if not given:
        return None
    return max(given, key=lambda tx: (tx[0], tx[1]))[1]


def _measurement(f: Feature, vals: list[tuple[int, float]], index_us: int) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for agg in f.aggs:
        col = f"{f.name}_{agg}"
        if agg == "count":
            out[col] = float(len(vals))
        elif not vals:
            out[col] = None
        elif agg == "last":
            out[col] = max(vals)[1]
        elif agg == "first":
            out[col] = min(vals)[1]
        elif agg == "min":
            out[col] = min(v for _, v in vals)
        elif agg == "max":
            out[col] = max(v for _, v in vals)
        elif agg == "mean":
            out[col] = sum(v for _, v in vals) / len(vals)
        elif agg == "trend":
            out[col] = max(vals)[1] - min(vals)[1]
        elif agg == "hours_since":  # since the window's first measurement, as the SQL's max(index) - min(t)
            out[col] = float(index_us - min(t for t, _ in vals)) / 3600000000.0
    return out


def _others(encounters: Iterable[Mapping[str, Any]], stay: Stay) -> Iterable[Mapping[str, Any]]:
    """Encounters that started before the index admission, the index stay itself excluded."""
    for r in encounters:
        if r["start"] is not None and r["start"] < stay.admit_us and r["encounter_id"] != stay.encounter_id:
            yield r


def _encounter_count(f: Feature, encounters: Sequence[Mapping[str, Any]], stay: Stay) -> int:
    since = stay.admit_us - window_us(f.window)  # type: ignore[operator]
    n = 0
    for r in _others(encounters, stay):
        end = r["end"] if r["end"] is not None else r["start"]
        if r["class"] in f.classes and r["start"] >= since and end < stay.admit_us:
            n += 1
    return n


def _days_since_discharge(f: Feature, encounters: Sequence[Mapping[str, Any]], stay: Stay) -> float | None:
    ends = [r["end"] for r in _others(encounters, stay)
            if r["class"] in f.classes and r["end"] is not None and r["end"] <= stay.admit_us]
    return float(stay.admit_us - max(ends)) / float(US_PER_DAY) if ends else None


__all__ = ["Record", "Stay", "StayFeatures"]
