"""Write every rendering of one validation report into a folder: report.json, report.html, the model card (JSON,
Markdown, XML) and the HTI-1 source attributes. Same input, same bytes: nothing adds a timestamp."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from careloop.reports._facts import Facts
from careloop.reports._hti1 import hti1_source_attributes
from careloop.reports._html import render_html
from careloop.reports._model_card import model_card, model_card_markdown, model_card_xml

__all__ = ["write_reports"]


def _finite(value: Any) -> Any:
    """NaN and infinities become null (the contract's "not computable"), so every file is valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _json(value: Any, *, sort_keys: bool = False) -> str:
    return json.dumps(_finite(value), indent=2, sort_keys=sort_keys, ensure_ascii=False, allow_nan=False) + "\n"


def write_reports(report: dict, facts: Facts, out_dir: str | Path) -> dict[str, Path]:
    """Render `report` with `facts` into `out_dir` (created if needed); returns {file kind: path}.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     sorted(write_reports({"title": "t", "primary": "m", "scores": {"m": {}}}, Facts(), d))
    ['hti1', 'html', 'json', 'model_card_json', 'model_card_md', 'model_card_xml']
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = _finite(report)
    hti1 = hti1_source_attributes(report, facts)
    card = model_card(report, facts)
    texts = {
        "json": ("report.json", _json(report, sort_keys=True)),
        "html": ("report.html", render_html(report, facts, hti1=hti1, card=card)),
        "model_card_json": ("model_card.json", _json(card)),
        "model_card_md": ("model_card.md", model_card_markdown(card)),
        "model_card_xml": ("model_card.xml", model_card_xml(card)),
        "hti1": ("hti1_source_attributes.json", _json(hti1)),
    }
    paths = {}
    for kind, (name, text) in texts.items():
        path = out / name
        path.write_text(text, encoding="utf-8")
        paths[kind] = path
    return paths
