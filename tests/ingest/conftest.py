"""Ingest fixtures live in tests/conftest.py (tasks and features tests use the same stores)."""
