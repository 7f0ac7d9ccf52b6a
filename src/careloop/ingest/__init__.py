"""FHIR ingest: Bulk Data NDJSON, Bundles and FHIR servers into careloop's event store, losing nothing."""
