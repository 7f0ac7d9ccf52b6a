"""Renderings of a validation report (report.json, see docs/validation-report.md) plus the facts only people can
supply: a self-contained HTML page, the CHAI Applied Model Card (JSON, Markdown, XML) and the 31 ONC HTI-1
predictive source attributes. Every renderer is a pure function of the report dict and the facts.

>>> facts = load_facts(None)
>>> "developer_name" in blank_facts(facts) and len(HTI1_KEYS) == 31
True
"""

from careloop.reports._facts import FACT_FIELDS, Facts, FactsError, NotAvailable, blank_facts, load_facts
from careloop.reports._hti1 import HTI1_KEYS, NOT_AVAILABLE_ALLOWED, hti1_source_attributes
from careloop.reports._html import render_html
from careloop.reports._model_card import model_card, model_card_markdown, model_card_xml
from careloop.reports._write import write_reports

__all__ = [
    "FACT_FIELDS",
    "HTI1_KEYS",
    "NOT_AVAILABLE_ALLOWED",
    "Facts",
    "FactsError",
    "NotAvailable",
    "blank_facts",
    "hti1_source_attributes",
    "load_facts",
    "model_card",
    "model_card_markdown",
    "model_card_xml",
    "render_html",
    "write_reports",
]
