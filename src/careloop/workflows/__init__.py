"""Workflows that wire the stages together for the CLI: train (fit, validate, document, register) and predict."""
