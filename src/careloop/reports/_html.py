"""The validation report as one self-contained HTML page: inline CSS and SVG, no script, no external resource.

`render_html` first turns report.json, the facts, the HTI-1 attributes and the model card into a context of
ready-formatted text (this module), then the Jinja template lays it out with autoescaping on; only the SVG figures,
which matplotlib escapes itself, are inserted as markup.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import jinja2
from markupsafe import Markup, escape

from careloop.reports import _plots
from careloop.reports._facts import FACT_FIELDS, Facts, NotAvailable, blank_facts, fact, is_blank, missing
from careloop.reports._format import (
    NB_NOT_RECORDED,
    RATES,
    count,
    day,
    est,
    fnum,
    fpct,
    gap,
    index_unit,
    metric,
    metric_name,
    model_block,
    net_benefit_at,
    number,
    operating_row,
    primary,
    scores,
    target_text,
)
from careloop.reports._hti1 import ROLES, group_label, hti1_source_attributes
from careloop.reports._model_card import model_card, value_text, words

__all__ = ["render_html"]

FAIRNESS_METRICS = ("auroc", "observed_expected", "calibration_intercept", "tpr", "fpr", "ppv", "flag_rate")

USE_FACTS = (("Intended use and workflow", "intended_use"), ("Intended users", "intended_users"),
             ("How to use", "how_to_use"), ("Decision role", "decision_role"),
             ("Intended patient population", "patient_population"), ("Cautioned out-of-scope use", "out_of_scope"),
             ("Known risks and limitations", "risks_and_limitations"),
             ("Known biases and ethical considerations", "biases_and_ethics"),
             ("Clinical risk level", "clinical_risk_level"))

# TRIPOD+AI items (BMJ 2024;385:e078378) this page reports, and where
TRIPOD = (("5b", "Dates of the data (first and last index times per split)", "data"),
          ("6b", "Eligibility: the cohort's exclusion steps", "data"),
          ("8a", "Outcome definition", "data"),
          ("11", "Missing data, per input, in training and test", "missingness"),
          ("12c", "Model type, candidates and selection", "model"),
          ("12e", "Performance measures: discrimination, calibration, clinical utility", "discrimination"),
          ("12f", "Recalibration (method, split)", "model"),
          ("14", "Fairness: subgroup analysis and tolerances", "fairness"),
          ("15", "Model output and the choice of threshold", "operating-point"),
          ("20a", "Participants and outcome events per split", "data"),
          ("21", "Number of stays and events in each analysis", "discrimination"),
          ("22", "Model specification: code version and training fingerprint", "model"),
          ("23a", "Performance with confidence intervals, including key subgroups; plots", "plots"),
          ("27a", "Handling of unavailable inputs (missingness)", "missingness"))


@cache
def _env() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("careloop.reports", "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True,
                             lstrip_blocks=True, keep_trailing_newline=True)
    env.filters["cell"] = cell
    return env


def cell(text: str) -> Markup:
    """A formatted estimate for a table cell: the value, then its interval on a smaller line (both escaped).

    >>> str(cell("0.741 (95% CI 0.712 to 0.770)"))
    '0.741<span class="ci">0.712 to 0.770</span>'
    """
    main, sep, ci = str(text).partition(" (95% CI ")
    if not sep:
        return escape(main)
    return escape(main) + Markup('<span class="ci">') + escape(ci.removesuffix(")")) + Markup("</span>")


# ---- generic rendering of free-form blocks (team, hyperparameters, achieved_on_calibration) ----

def node(value: Any, key: str = "") -> dict:
    """A free-form JSON value as a tree the template renders: text, key-value table, or a table of records."""
    if isinstance(value, dict) and set(value) <= {"estimate", "ci"} and "estimate" in value:
        return {"type": "text", "text": metric(key, value)}
    if isinstance(value, dict):
        if not value:
            return {"type": "text", "text": "none"}
        return {"type": "kv", "rows": [(k.replace("_", " "), node(v, k)) for k, v in value.items()]}
    if isinstance(value, list):
        if value and all(isinstance(v, dict) for v in value):
            cols = list(dict.fromkeys(k for v in value for k in v))
            return {"type": "table", "columns": [c.replace("_", " ") for c in cols],
                    "rows": [[node(v.get(c), c) for c in cols] for v in value]}
        return {"type": "text", "text": ", ".join(node(v, key)["text"] if not isinstance(v, dict | list) else str(v)
                                                  for v in value) or "none"}
    if isinstance(value, bool) or value is None:
        return {"type": "text", "text": {True: "yes", False: "no", None: "n/a"}[value]}
    if isinstance(value, int):
        return {"type": "text", "text": count(value)}
    if isinstance(value, float):
        return {"type": "text", "text": fpct(value) if key in RATES else f"{value:.4g}"}
    return {"type": "text", "text": str(value)}


# ---- sections ----

def _fact_text(facts: Facts, name: str) -> tuple[str, bool]:
    value = fact(facts, name)
    if isinstance(value, NotAvailable):
        return f"Not available: {value.reason}", False
    if is_blank(value):
        return missing(name), True
    if name == "decision_role":
        return ROLES.get(str(value), str(value)), False
    return (", ".join(value) if isinstance(value, list) else str(value).strip()), False


def _summary(report: dict) -> dict:
    ev, m, op = primary(report), primary(report).get("metrics") or {}, report.get("operating_point") or {}
    row, unit = operating_row(report), index_unit(report)
    fair = report.get("fairness") or {}
    flags = fair.get("flags") or []
    suppressed = [f"{a}: {s.get('label') or s.get('group')} (n={count(s.get('n'))})"
                  for a, b in (fair.get("attributes") or {}).items() for s in b.get("suppressed") or []]
    status = "red" if flags else "amber" if suppressed else "green"
    nb = net_benefit_at(ev, row)
    return {
        "auroc": est(m.get("auroc")), "auprc": est(m.get("auprc")), "slope": est(m.get("calibration_slope")),
        "intercept": est(m.get("calibration_intercept")), "oe": est(m.get("observed_expected")),
        "n": count(ev.get("n")), "positives": count(ev.get("positives")), "prevalence": fpct(ev.get("prevalence")),
        "probabilistic": ev.get("probabilistic", True), "unit": unit,
        "op": None if not row and not op else {
            "threshold": fpct(op.get("threshold", (row or {}).get("threshold"))),
            "policy": op.get("policy", "n/a"), "target": target_text(op, unit) if op else "n/a",
            "chosen_on": op.get("chosen_on", "calibration"), "rationale": _sentence(op.get("rationale")),
            "alerts": fnum((row or {}).get("alerts_per_100"), 1),
            "sensitivity": metric("sensitivity", (row or {}).get("sensitivity")),
            "ppv": metric("ppv", (row or {}).get("ppv")), "nne": metric("nne", (row or {}).get("nne")),
            "net_benefit": est(nb.get("net_benefit")) if nb else NB_NOT_RECORDED,
            "treat_all": fnum(nb.get("treat_all")) if nb else "n/a",
        },
        "comparisons": [f"{metric_name(c.get('metric', 'auroc'))} difference from {c.get('reference')}: "
                        f"{est(c.get('difference'), sign=True)}"
                        + ("" if c.get("intervals_overlap") is None else
                           "; the two scores' intervals overlap" if c.get("intervals_overlap") else
                           "; the two scores' intervals do not overlap")
                        for c in report.get("comparisons") or []],
        "fairness": {"status": status,
                     "flags": [{"text": str(f.get("message") or ""), "detail": _flag_detail(fair, f)} for f in flags],
                     "suppressed": suppressed},
    }


def _flag_detail(fair: dict, flag: dict) -> str:
    name = flag.get("metric", "")
    return (f"{flag.get('attribute')} = {group_label(fair, flag)}: {metric_name(name)} gap "
            f"{gap(name, flag.get('gap'))}, tolerance ±{flag.get('tolerance')}")


def _sentence(text: object) -> str:
    s = str(text or "none recorded").strip()
    return s if s.endswith((".", "!", "?")) else s + "."


def _data(report: dict) -> dict:
    data = report.get("data") or {}
    splits = [{"name": name, "stays": count(s.get("stays")), "patients": count(s.get("patients")),
               "positives": count(s.get("positives")), "prevalence": fpct(s.get("prevalence")),
               "first": day(s.get("first_index")), "last": day(s.get("last_index"))}
              for name, s in (data.get("splits") or {}).items()]
    miss = [{"column": r.get("column"), "label": r.get("label") or r.get("column"), "train": fpct(r.get("train")),
             "test": fpct(r.get("test")), "shift": _shift(r)} for r in data.get("missingness") or []]
    return {"source": data.get("source", "unknown"), "label": data.get("label", "unknown"),
            "positive": data.get("positive", "unknown"), "splits": splits,
            "excluded": [{"step": e.get("step"), "stays": count(e.get("stays"))} for e in data.get("excluded") or []],
            "missingness": miss}


def _shift(row: dict) -> bool:
    a, b = number(row.get("train")), number(row.get("test"))
    return a is not None and b is not None and abs(a - b) >= 0.05


def _model(report: dict) -> dict | None:
    model = model_block(report)
    if not model:
        return None
    rows = [("Name", model.get("name")), ("Version", model.get("version")), ("Bundle", model.get("bundle_id")),
            ("Task", model.get("task")), ("Feature set", model.get("feature_set")),
            ("Input features", count(model.get("n_features"))), ("Estimator", model.get("estimator")),
            ("Selection", model.get("selection")),
            ("Calibration", f"{(model.get('calibration') or {}).get('method', 'n/a')} scaling fitted on the "
                            f"{(model.get('calibration') or {}).get('fitted_on', 'n/a')} split"),
            ("Code version", model.get("code_version")), ("Training fingerprint", model.get("training_fingerprint"))]
    cands = model.get("candidates") or {}
    measures = list(dict.fromkeys(k for c in cands.values() for k in c))
    return {"rows": [(k, "n/a" if v is None else str(v)) for k, v in rows],
            "candidates": {"columns": [metric_name(k.removeprefix("calibration_")) + " (calibration split)"
                                       if k.startswith("calibration_") else metric_name(k) for k in measures],
                           "rows": [(name, [metric(k.removeprefix("calibration_"), c.get(k)) for k in measures])
                                    for name, c in cands.items()]},
            "hyperparameters": node(model.get("hyperparameters") or {})}


def _score_rows(report: dict) -> list[dict]:
    out = []
    for name, ev in scores(report):
        m = ev.get("metrics") or {}
        out.append({"name": name, "primary": name == report.get("primary"), "n": count(ev.get("n")),
                    "positives": count(ev.get("positives")), "probabilistic": ev.get("probabilistic", True),
                    "cells": [est(m.get(k)) for k in ("auroc", "auprc", "brier", "calibration_intercept",
                                                      "calibration_slope", "observed_expected")],
                    "mean_predicted": fpct(m.get("mean_predicted")), "observed_rate": fpct(m.get("observed_rate"))})
    return out


def _operating_point(report: dict) -> dict | None:
    op = report.get("operating_point")
    if not isinstance(op, dict):
        return None
    known = {"policy": op.get("policy"), "target": target_text(op, index_unit(report)),
             "threshold": f"risk ≥ {fpct(op.get('threshold'))}", "chosen_on": f"the {op.get('chosen_on')} split",
             "rationale": op.get("rationale")}
    rest = {k: v for k, v in op.items() if k not in known}
    return node({**{k: v for k, v in known.items() if k in op or k == "target"}, **rest})


def _thresholds(report: dict) -> list[dict]:
    ev = primary(report)
    rows = [r for r in ev.get("threshold_table") or [] if number(r.get("threshold")) is not None]
    op = operating_row(report)
    marked = False
    if op is not None and number(op.get("threshold")) is not None:
        same = [r for r in rows if abs(r["threshold"] - op["threshold"]) < 1e-9]
        if not same:
            rows = sorted([*rows, op], key=lambda r: r["threshold"])
    out = []
    for r in rows:
        is_op = op is not None and not marked and abs(r["threshold"] - (number(op.get("threshold")) or -1)) < 1e-9
        marked = marked or is_op
        out.append({"op": is_op, "threshold": fpct(r.get("threshold")), "flagged": count(r.get("flagged")),
                    "alerts": fnum(r.get("alerts_per_100"), 1),
                    "cells": [metric(k, r.get(k)) for k in ("sensitivity", "specificity", "ppv", "npv", "nne")],
                    "counts": " / ".join(count(r.get(k)) for k in ("tp", "fp", "fn", "tn"))})
    return out


def _fairness(report: dict) -> dict:
    fair = report.get("fairness") or {}
    tol = fair.get("tolerances") or {}
    attrs = []
    for attr, block in (fair.get("attributes") or {}).items():
        groups = block.get("groups") or []
        names = [k for k in FAIRNESS_METRICS if any(k in (g.get("metrics") or {}) for g in groups)]
        names += [k for g in groups for k in g.get("metrics") or {} if k not in names]
        rows = []
        for g in groups:
            flags = set(g.get("flags") or [])
            rows.append({"group": g.get("label") or g.get("group"), "code": g.get("group"), "n": count(g.get("n")),
                         "positives": count(g.get("positives")), "flagged": bool(flags),
                         "cells": [{"value": metric(k, (g.get("metrics") or {}).get(k)),
                                    "gap": gap(k, (g.get("gaps") or {}).get(k)), "flag": k in flags} for k in names]})
        attrs.append({"name": attr, "columns": [metric_name(k) + (f" (±{tol[k]:g})" if k in tol else "")
                                                for k in names],
                      "rows": rows, "suppressed": [{"group": s.get("label") or s.get("group"), "n": count(s.get("n")),
                                                    "reason": s.get("reason")} for s in block.get("suppressed") or []]})
    return {"threshold": fpct(fair.get("threshold")), "min_group_size": fair.get("min_group_size", "n/a"),
            "tolerances": [f"{metric_name(k)} ±{v:g}" for k, v in tol.items()], "attributes": attrs,
            "comparisons": (fair.get("multiplicity") or {}).get("comparisons", "all")}


def _importance(report: dict) -> list[dict]:
    rows = [r for r in report.get("importance") or [] if number(r.get("mean_abs_contribution")) is not None]
    return [{"label": r.get("label") or r.get("column"), "column": r.get("column"),
             "value": f"{r['mean_abs_contribution']:.4f}"} for r in rows[:20]]


def _reasons(report: dict) -> list[dict]:
    out = []
    for ex in report.get("example_reasons") or []:
        reasons = [{"phrase": r.get("phrase") or f"{r.get('column')} = {r.get('value')}",
                    "direction": "up" if (number(r.get("contribution")) or 0) > 0 else "down",
                    "contribution": fnum(r.get("contribution"), 3, sign=True)} for r in ex.get("reasons") or []]
        out.append({"risk": fpct(ex.get("risk")), "reasons": reasons})
    return out


def _card(card: dict) -> list[dict]:
    """The model card as sections of (field, text, blank?) and metric blocks, for the page."""
    sections = []
    for key, value in card.items():
        if not isinstance(value, dict):
            sections.append({"title": words(key), "fields": [(words(key), str(value), _is_missing(value))],
                             "metrics": []})
            continue
        fields, metrics = [], []
        for k, v in value.items():
            if isinstance(v, dict) and "Results" in v:
                metrics.append({"title": words(k), "fields": [(words(f), str(t), _is_missing(t))
                                                              for f, t in v.items() if f != "Results"],
                                "results": [(r["Label"], value_text(r["ValueJson"])) for r in v["Results"]]})
            elif isinstance(v, dict):
                fields += [(f"{words(k)}: {words(f)}", _join(t), _is_missing(t)) for f, t in v.items()]
            else:
                fields.append((words(k), _join(v), _is_missing(v)))
        sections.append({"title": words(key), "fields": fields, "metrics": metrics})
    return sections


def _join(value: object) -> str:
    return ", ".join(str(v) for v in value) if isinstance(value, list) else str(value)


def _is_missing(value: object) -> bool:
    texts = value if isinstance(value, list) else [value]
    return any(isinstance(t, str) and t.startswith("Not yet supplied:") for t in texts)


def render_html(report: dict, facts: Facts, *, hti1: dict | None = None, card: dict | None = None) -> str:
    """The validation report page (one self-contained HTML document) for report.json and the facts.

    >>> html = render_html({"title": "t", "primary": "m", "scores": {"m": {}}}, Facts())
    >>> html.startswith("<!DOCTYPE html>") and "Not yet supplied" in html
    True
    """
    hti1 = hti1 if hti1 is not None else hti1_source_attributes(report, facts)
    card = card if card is not None else model_card(report, facts)
    model = model_block(report)
    plots = _plots.figures(report)
    blanks = blank_facts(facts)
    context = {
        "title": report.get("title") or model.get("name") or "Validation report",
        "kind": report.get("kind", "model"), "created": report.get("created", "unknown"),
        "schema": report.get("schema", "unknown"), "primary": report.get("primary"),
        "model_name": model.get("name") or report.get("primary"), "task": model.get("task"),
        "version": model.get("version"), "bundle_id": model.get("bundle_id"),
        "summary": _summary(report), "data": _data(report), "model": _model(report), "scores": _score_rows(report),
        "comparisons": [{"reference": c.get("reference"), "metric": metric_name(c.get("metric", "auroc")),
                         "difference": est(c.get("difference"), sign=True),
                         "overlap": node(c.get("intervals_overlap"))["text"]} for c in report.get("comparisons") or []],
        "operating_point": _operating_point(report),
        "thresholds": _thresholds(report), "fairness": _fairness(report), "importance": _importance(report),
        "reasons": _reasons(report), "team": None if report.get("team") is None else node(report["team"]),
        "plots": {k: None if v is None else Markup(v) for k, v in plots.items()},  # matplotlib escapes the SVG's text
        "uses": [(label, *_fact_text(facts, name)) for label, name in USE_FACTS],
        "hti1": list(hti1.values()), "blanks": [(b, FACT_FIELDS.get(b, "")) for b in blanks],
        "card": _card(card), "tripod": TRIPOD,
        "hti1_counts": {s: sum(a["source"] == s for a in hti1.values())
                        for s in ("computed", "supplied", "not_available", "blank")},
    }
    return _env().get_template("report.html.j2").render(**context)

