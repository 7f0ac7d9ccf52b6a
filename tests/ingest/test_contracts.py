"""The data contracts agree with each other and with what ingest writes (MEDS-compatible events)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from careloop import contracts as C


def test_join_keys_agree_across_tables():
    for schema in (C.ENCOUNTERS, C.PATIENTS, C.NOTES):
        assert schema.field("subject_id").type == C.EVENTS.field("subject_id").type == pa.int64()
    assert C.ENCOUNTERS.field("encounter_id").type == C.EVENTS.field("encounter_id").type
    assert C.EVENTS.field("time").type == C.NOTES.field("time").type == pa.timestamp("us", tz="UTC")


def test_events_are_meds_compatible():
    names = C.EVENTS.names
    assert names[:5] == ["subject_id", "time", "code", "numeric_value", "text_value"]


def test_written_parts_follow_the_contracts(hospital_store):
    store, _ = hospital_store
    for table, schema in C.TABLES.items():
        for part in sorted((store / table).glob("*.parquet"))[:3]:
            assert pq.read_schema(part).remove_metadata() == schema, (table, part)


def test_subject_ids_are_stable_and_positive():
    assert C.subject_id("abc") == C.subject_id("abc") > 0
    assert C.subject_id("abc") != C.subject_id("abd")
