"""Dates as FHIR defines them: an end of partial precision ("2023-05-01", "2023-05", "2023") includes all of its day,
month or year, and two dates are compared at their own precision (a death in "2023-05" is not before a birth on
2023-05-10). Also: an open-ended Coverage ("9999-12-31") and null placeholders in a repeating primitive."""

from __future__ import annotations

import datetime as dt

import orjson
import pytest

from careloop.ingest.mapping import Batch, Context, Reject, decode, map_resource

P = {"reference": "Patient/p1"}


def _us(*args: int) -> int:
    return (dt.datetime(*args, tzinfo=dt.UTC) - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(microseconds=1)


def _map(res: dict) -> Batch:
    b = Batch()
    map_resource(decode(orjson.dumps(res)), Context(), b)
    return b


def _enc(start: str, end: str) -> dict:
    return {"resourceType": "Encounter", "id": "e1", "status": "finished", "subject": P, "class": {"code": "EMER"},
            "period": {"start": start, "end": end}}


@pytest.mark.parametrize(("start", "end", "stored_end"), [
    ("2023-05-01T10:00:00Z", "2023-05-01", _us(2023, 5, 1, 23, 59, 59, 999999)),  # same-day visit
    ("2023-05-01T10:00:00Z", "2023-05-04", _us(2023, 5, 4, 23, 59, 59, 999999)),  # a stay of days
    ("2023-05-01T10:00:00Z", "2023-05", _us(2023, 5, 31, 23, 59, 59, 999999)),
    ("2023-12-01T10:00:00Z", "2023-12", _us(2023, 12, 31, 23, 59, 59, 999999)),
    ("2024-02-10", "2024-02", _us(2024, 2, 29, 23, 59, 59, 999999)),  # leap year
    ("2023-05-01T10:00:00Z", "2023", _us(2023, 12, 31, 23, 59, 59, 999999)),
    ("2023-05-01T10:00:00Z", "2023-05-03T08:00:00+02:00", _us(2023, 5, 3, 6)),  # a dateTime is itself
    # the start's own day in its zone, already the next day in UTC: the end is not before the start
    ("2023-05-01T23:00:00-05:00", "2023-05-01", _us(2023, 5, 2, 4)),
])
def test_an_end_of_partial_precision_is_its_last_instant(start, end, stored_end):
    b = _map(_enc(start, end))
    assert b.enc["end"] == [stored_end]
    assert b.ev[-1][1:3] == (stored_end, "ENCOUNTER_END/EMER")


@pytest.mark.parametrize(("start", "end"), [
    ("2023-05-02T10:00:00Z", "2023-05-01"),
    ("2023-05-01T10:00:00Z", "2023-04"),
    ("2023-05-01T10:00:00Z", "2023-05-01T09:59:59Z"),
    ("2023-05-02", "2023-05-01T23:00:00Z"),
])
def test_an_end_before_its_start_at_its_precision_is_still_impossible(start, end):
    with pytest.raises(Reject) as exc:
        _map(_enc(start, end))
    assert exc.value.reason == "impossible date"


@pytest.mark.parametrize(("birth", "death", "stored"), [
    ("2023-05-10", "2023-05", _us(2023, 5, 31, 23, 59, 59, 999999)),  # same month, written at month precision
    ("2023-05-10", "2023", _us(2023, 12, 31, 23, 59, 59, 999999)),
    ("2023-05-10", "2023-05-10T02:00:00+05:30", _us(2023, 5, 10)),  # the birth day, in the zone it was written in
    ("2023-05-10", "2023-05-11", _us(2023, 5, 11, 23, 59, 59, 999999)),
    ("1950", "1950-03-01T10:00:00Z", _us(1950, 3, 1, 10)),
])
def test_a_death_at_the_births_precision_is_not_before_it(birth, death, stored):
    """... and a death known to its day, month or year only is stored at the end of it (see `map_patient`)."""
    b = _map({"resourceType": "Patient", "id": "p1", "birthDate": birth, "deceasedDateTime": death})
    assert b.pat["deceased_time"] == [stored]
    assert [e[1] for e in b.ev if e[2] == "MEDS_DEATH"] == [stored]


@pytest.mark.parametrize(("birth", "death"), [("2023-05-10", "2023-04"), ("2023-05-10", "2023-05-09T23:00:00Z"),
                                              ("2023", "2022-12-31")])
def test_a_death_before_the_birth_is_impossible(birth, death):
    with pytest.raises(Reject) as exc:
        _map({"resourceType": "Patient", "id": "p1", "birthDate": birth, "deceasedDateTime": death})
    assert exc.value.reason == "impossible date"


def test_a_notes_period_end_of_a_day_is_the_end_of_that_day():
    doc = {"resourceType": "DocumentReference", "id": "d1", "status": "current", "subject": P,
           "context": {"period": {"start": "2023-05-01", "end": "2023-05-02"}}}
    assert _map(doc).notes["time"] == [_us(2023, 5, 2, 23, 59, 59, 999999)]


def _coverage(end: str) -> dict:
    return {"resourceType": "Coverage", "id": "cv1", "status": "active", "beneficiary": P,
            "type": {"coding": [{"system": "https://nahdo.org/sopt", "code": "1"}]},
            "period": {"start": "2020-01-01", "end": end}}


@pytest.mark.parametrize("end", ["9999-12-31", "9999-12-31T23:59:59Z", "2200-01-01", "2024-06-30"])
def test_an_open_ended_coverage_loads_with_its_end_as_sent(end):
    b = _map(_coverage(end))
    assert [(e[1], e[2], e[4]) for e in b.ev] == [(_us(2020, 1, 1), "SOPT/1", end)]


def test_a_coverage_end_that_is_not_a_date_is_still_refused():
    with pytest.raises(Reject) as exc:
        _map(_coverage("2020-02-30"))
    assert exc.value.reason == "impossible date"


def test_null_placeholders_in_given_names_load():
    dr = {"resourceType": "Practitioner", "id": "dr1", "identifier": [{"system": "http://hl7.org/fhir/sid/us-npi",
                                                                       "value": "1234567893"}],
          "name": [{"family": "Smith", "given": ["Ann", None, "B"],
                    "_given": [None, {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/"
                                                            "iso21090-EN-qualifier", "valueCode": "IN"}]}, None]}]}
    assert _map(dr).dir["name"] == ["Ann B Smith"]


def test_a_condition_known_by_its_onset_period_is_stamped_at_its_start():
    cond = {"resourceType": "Condition", "id": "c1", "subject": P,
            "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "I50.9"}]},
            "onsetPeriod": {"start": "2023-05-01T10:00:00Z", "end": "2023-06-01"}}
    cols = _map(cond).event_columns()
    assert cols["time"] == [_us(2023, 5, 1, 10)] and cols["code"] == ["ICD10CM/I50.9"]
    with_recorded = dict(cond, recordedDate="2023-07-02T00:00:00Z")  # when it became known still comes first
    assert _map(with_recorded).event_columns()["time"] == [_us(2023, 7, 2)]
    with pytest.raises(Reject, match="missing time"):
        _map(dict(cond, onsetPeriod={"end": "2023-06-01"}))


def test_a_procedure_with_only_the_end_of_its_period_is_stamped_at_that_end():
    proc = {"resourceType": "Procedure", "id": "x1", "status": "completed", "subject": P,
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "387713003"}]},
            "performedPeriod": {"end": "2023-05-01"}}
    assert _map(proc).event_columns()["time"] == [_us(2023, 5, 2) - 1]  # a date-only end: its last instant
    started = dict(proc, performedPeriod={"start": "2023-04-30T08:00:00Z", "end": "2023-05-01"})
    assert _map(started).event_columns()["time"] == [_us(2023, 4, 30, 8)]



@pytest.mark.parametrize(("value", "expected"), [
    ("2016-12-31T23:59:60Z", _us(2017, 1, 1)),  # a leap second: the instant after 23:59:59, as POSIX time reads it
    ("2016-12-31T23:59:60.5+00:00", _us(2017, 1, 1, 0, 0, 0, 500000)),
    ("2016-12-31T18:59:60-05:00", _us(2017, 1, 1)),
])
def test_a_leap_second_is_read_not_quarantined(value, expected):
    from careloop.ingest.mapping import parse_time

    assert parse_time(value, "effectiveDateTime") == expected


@pytest.mark.parametrize("value", ["2016-12-31T23:59:61Z", "2016-12-31T23:60:00Z", "2016-12-31T24:00:60Z"])
def test_other_impossible_times_are_still_refused(value):
    from careloop.ingest.mapping import _parse_time

    with pytest.raises(Reject, match="impossible date"):
        _parse_time(value, "effectiveDateTime")


def _note(data: bytes, content_type: str) -> dict:
    import base64

    return {"resourceType": "DocumentReference", "id": "d1", "status": "current", "subject": P,
            "type": {"coding": [{"system": "http://loinc.org", "code": "18842-5"}]}, "date": "2023-05-03T10:00:00Z",
            "content": [{"attachment": {"contentType": content_type, "data": base64.b64encode(data).decode()}}]}


@pytest.mark.parametrize(("data", "content_type"), [
    ("Patient seen by Dr. Müller; café au lait spots.".encode("latin-1"), "text/plain; charset=ISO-8859-1"),
    ("Patient seen by Dr. Müller; café au lait spots.".encode("cp1252"), 'text/plain;charset="windows-1252"'),
    ("Patient seen by Dr. Müller; café au lait spots.".encode(), "text/plain"),
    ("Patient seen by Dr. Müller; café au lait spots.".encode(), "text/plain; format=flowed; charset=utf-8"),
])
def test_a_note_is_decoded_in_the_charset_its_content_type_names(data, content_type):
    b = _map(_note(data, content_type))
    assert b.notes["text"] == ["Patient seen by Dr. Müller; café au lait spots."]


@pytest.mark.parametrize(("data", "content_type", "detail"), [
    ("Müller".encode("latin-1"), "text/plain", "not base64 text in utf-8"),  # no charset named: UTF-8, and it is not
    (b"x", "text/plain; charset=klingon-1", "unknown charset 'klingon-1'"),
])
def test_a_note_that_cannot_be_decoded_is_quarantined_saying_why(data, content_type, detail):
    with pytest.raises(Reject) as exc:
        _map(_note(data, content_type))
    assert exc.value.reason == "invalid value" and detail in exc.value.detail


def _lab(**times) -> dict:
    return {"resourceType": "Observation", "id": "o1", "status": "final", "subject": P,
            "code": {"coding": [{"system": "http://loinc.org", "code": "2951-2"}]},
            "valueQuantity": {"value": 140, "unit": "mmol/L", "system": "http://unitsofmeasure.org", "code": "mmol/L"},
            **times}


@pytest.mark.parametrize(("times", "expected"), [
    # resulted after it was drawn: known when resulted (a 10:00 discharge does not see a 09:30 draw resulted at 16:00)
    ({"effectiveDateTime": "2023-01-05T09:30:00Z", "issued": "2023-01-05T16:00:00Z"}, _us(2023, 1, 5, 16)),
    ({"effectiveDateTime": "2023-01-05T09:30:00Z"}, _us(2023, 1, 5, 9, 30)),
    ({"effectiveDateTime": "2023-01-05T09:30:00Z", "issued": "2023-01-05T09:00:00Z"}, _us(2023, 1, 5, 9, 30)),
    ({"effectiveDateTime": "2023-01-05T09:30:00Z", "issued": "yesterday"}, _us(2023, 1, 5, 9, 30)),  # unreadable
    # a collection over a period is known when it ends (at the end of its day when the end is a date)
    ({"effectivePeriod": {"start": "2023-01-04T08:00:00Z", "end": "2023-01-05T08:00:00Z"}}, _us(2023, 1, 5, 8)),
    ({"effectivePeriod": {"start": "2023-01-04T08:00:00Z", "end": "2023-01-05"}}, _us(2023, 1, 5, 23, 59, 59, 999999)),
    ({"effectivePeriod": {"start": "2023-01-04T08:00:00Z"}}, _us(2023, 1, 4, 8)),
    ({"issued": "2023-01-05T16:00:00Z"}, _us(2023, 1, 5, 16)),
    # a date alone: known by the end of that day (a result dated on a 10:00 discharge's day may come at 16:00)
    ({"effectiveDateTime": "2023-01-05"}, _us(2023, 1, 5, 23, 59, 59, 999999)),
    ({"effectiveDateTime": "2023-01"}, _us(2023, 1, 31, 23, 59, 59, 999999)),
    ({"effectiveDateTime": "2023-01-05", "issued": "2023-01-06T08:00:00Z"}, _us(2023, 1, 6, 8)),
    ({"effectiveDateTime": "2023-01-05", "issued": "2023-01-05T16:00:00Z"}, _us(2023, 1, 5, 23, 59, 59, 999999)),
    ({"effectivePeriod": {"start": "2023-01-04"}}, _us(2023, 1, 4, 23, 59, 59, 999999)),
])
def test_a_result_is_stamped_when_it_was_known(times, expected):
    b = _map(_lab(**times))
    assert [e[1] for e in b.ev] == [expected]


def test_a_result_with_no_time_at_all_is_quarantined():
    with pytest.raises(Reject, match="missing time"):
        _map(_lab())
