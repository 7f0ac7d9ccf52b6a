"""write_reports: the five documents (and the XML card), valid JSON, byte-identical for the same input."""

from __future__ import annotations

import json
import math
from pathlib import Path

from careloop.reports import HTI1_KEYS, Facts, write_reports


def test_writes_every_document(report: dict, facts: Facts, tmp_path: Path) -> None:
    paths = write_reports(report, facts, tmp_path / "bundle")
    names = {p.name for p in paths.values()}
    assert {"report.json", "report.html", "model_card.json", "model_card.md", "hti1_source_attributes.json"} <= names
    assert all(p.parent == tmp_path / "bundle" and p.stat().st_size > 1000 for p in paths.values())
    text = paths["json"].read_text()
    assert json.loads(text) == report
    assert text == json.dumps(report, sort_keys=True, indent=2, ensure_ascii=False) + "\n"
    hti1 = json.loads(paths["hti1"].read_text())
    assert list(hti1) == list(HTI1_KEYS)
    card = json.loads(paths["model_card_json"].read_text())
    assert list(card) == ["BasicInfo", "ReleaseInfo", "ModelSummary", "UsesAndDirections", "Warnings",
                          "TrustIngredients", "KeyMetrics", "Resources", "Bibliography"]  # schema order, not sorted


def test_same_input_same_bytes(report: dict, facts: Facts, tmp_path: Path) -> None:
    a = write_reports(report, facts, tmp_path / "a")
    b = write_reports(report, facts, tmp_path / "b")
    for kind in a:
        assert a[kind].read_bytes() == b[kind].read_bytes(), kind


def test_nan_becomes_null(report: dict, facts: Facts, tmp_path: Path) -> None:
    report["scores"]["lace"]["metrics"]["auprc"] = {"estimate": math.nan, "ci": None}
    paths = write_reports(report, facts, tmp_path)
    assert json.loads(paths["json"].read_text())["scores"]["lace"]["metrics"]["auprc"]["estimate"] is None
    assert "NaN" not in paths["json"].read_text()
