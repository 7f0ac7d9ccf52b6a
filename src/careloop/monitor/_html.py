"""The monitoring report as one self-contained HTML page: inline CSS and SVG, no script, no external resource.

`render_html(report)` takes monitor.json (`MonitorResult.to_dict()`) and nothing else: the page can be rebuilt from
the JSON alone. The figures are `figures(report)` (also usable by a dashboard); every alert is listed with its
reason, and the charts mark the periods that raised one.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import jinja2
from markupsafe import Markup

from careloop.monitor import _plots

__all__ = ["figures", "render_html"]

KIND_NAMES = {"input_drift": "Input drift", "output_drift": "Output drift", "performance": "Performance",
              "calibration": "Calibration", "fairness": "Fairness", "burden": "Alert burden"}
METRIC_NAMES = {"psi": "PSI", "missingness": "missingness change", "auroc": "AUROC", "ppv": "PPV",
                "calibration_intercept": "calibration intercept", "calibration_slope": "calibration slope",
                "observed_expected": "observed/expected", "tpr": "sensitivity", "fpr": "false-positive rate",
                "flag_rate": "flag rate", "alerts_per_100": "alerts per 100 discharges",
                "override_rate": "override rate", "repeat_share": "repeat-alert share", "alert_ppv": "PPV of cards"}


def figures(report: dict) -> dict[str, str]:
    """name -> inline SVG of every figure the report can draw (psi_heatmap, output, performance, calibration,
    subgroups, burden); figures without data are left out."""
    out = {}
    for name, fn in (("psi_heatmap", _plots.psi_heatmap_svg), ("output", _plots.output_svg),
                     ("performance", _plots.performance_svg), ("calibration", _plots.calibration_svg),
                     ("subgroups", _plots.subgroups_svg), ("burden", _plots.burden_svg)):
        svg = fn(report)
        if svg:
            out[name] = svg
    return out


def _num(v: Any, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, int):
        return f"{v:,}"
    return f"{v:.{digits}f}"


def _is_number(text: str) -> bool:
    try:
        float(text)
    except (TypeError, ValueError):
        return False
    return True


def _pct(v: Any) -> str:
    return "–" if v is None else f"{100 * v:.1f}%"


def _est(d: dict | None, digits: int = 3) -> str:
    if not d or d.get("estimate") is None:
        return "–"
    ci = d.get("ci")
    text = f"{d['estimate']:.{digits}f}"
    return text + (f" ({ci[0]:.{digits}f} to {ci[1]:.{digits}f})" if ci else "")


def _concerns(a: dict) -> str:
    return a.get("feature") or a.get("group") or "–"


def _suppressed(periods: list[dict]) -> list[dict]:
    """Every subgroup a period left out for its size, named (a count alone hides which groups go unwatched)."""
    out = []
    for p in periods:
        for attr, res in (p.get("subgroups") or {}).items():
            sup = res.get("suppressed") if isinstance(res, dict) else None
            for s in sup if isinstance(sup, list) else []:
                out.append({"period": p.get("label") or p["start"], "attribute": s.get("attribute") or attr,
                            "group": s.get("label") or s.get("group"), "n": _num(s.get("n")),
                            "reason": s.get("reason") or ""})
    return out


def _context(report: dict) -> dict:
    periods = report.get("periods") or []
    alerts = [{**a, "period": p.get("label") or p["start"], "kind_name": KIND_NAMES.get(a["kind"], a["kind"]),
               "metric_name": METRIC_NAMES.get(a.get("metric"), a.get("metric") or ""), "concerns": _concerns(a),
               "value_text": _num(a.get("value"))} for p in periods for a in p["alerts"]]
    by_kind: dict[str, int] = {}
    for a in alerts:
        by_kind[a["kind"]] = by_kind.get(a["kind"], 0) + 1
    rows = []
    for p in periods:
        perf = p.get("performance") or {}
        top = next((r for r in p["input_drift"] if r.get("psi") is not None), None)
        rows.append({
            "label": p.get("label") or p["start"], "start": p["start"], "end": p["end"], "complete": p["complete"],
            "stays": _num(p["stays"]), "patients": _num(p["patients"]), "tested": p.get("tested", True),
            "labelled": _num(perf.get("labelled")), "pending": _num(perf.get("pending")),
            "auroc": _est(perf.get("auroc")), "intercept": _est(perf.get("calibration_intercept"), 2),
            "slope": _est(perf.get("calibration_slope"), 2), "ppv": _est(perf.get("ppv"), 2),
            "note": perf.get("note") or "",
            "top": f"{top['feature']} {top['psi']:.2f}" if top else "–",
            "output_psi": _num(p["output_drift"].get("psi"), 3), "alerts": len(p["alerts"]),
            "kinds": sorted({a["kind"] for a in p["alerts"]})})
    worst: dict[str, dict] = {}
    for p in periods:
        for r in p["input_drift"]:
            if r.get("psi") is None:
                continue
            w = worst.get(r["feature"])
            if w is None or r["psi"] > w["psi"]:
                worst[r["feature"]] = {"feature": r["feature"], "label": r.get("label") or "", "psi": r["psi"],
                                       "period": p.get("label") or p["start"],
                                       "missing_reference": r.get("missing_reference"), "missing": r.get("missing")}
    n_alerted = {}
    for a in alerts:
        if a["kind"] == "input_drift":
            n_alerted[a["feature"]] = n_alerted.get(a["feature"], 0) + 1
    inputs = sorted(worst.values(), key=lambda r: -r["psi"])
    for r in inputs:
        r.update(psi_text=f"{r['psi']:.3f}", miss_ref=_pct(r["missing_reference"]), miss=_pct(r["missing"]),
                 alerts=n_alerted.get(r["feature"], 0))
    burden, by_version = [], []
    for p in periods:
        b = p.get("burden")
        if b:
            burden.append({"label": p.get("label") or p["start"], "calls": _num(b["calls"]),
                           "alerts": _num(b["alerts"]), "discharges": _num(b["discharges"]),
                           "per100": _num(b.get("alerts_per_100"), 1), "ppv": _pct(b.get("ppv")),
                           "nne": _num(b.get("nne"), 1), "override": _pct(b.get("override_rate")),
                           "feedback": _num(b.get("feedback")), "repeat": _pct(b.get("repeat_share")),
                           "suppressed": _num(b.get("suppressed_repeats")), "deferred": _num(b.get("deferred"))})
            for v in b.get("by_threshold") or []:
                thr = v["threshold"]
                shown = "the bundle's operating point" if thr == "bundle" else (
                    f"{100 * float(thr):.1f}%" if _is_number(thr) else str(thr))
                by_version.append({"label": p.get("label") or p["start"], "version": v["version"], "threshold": shown,
                                   "scored": _num(v["scored"]), "alerts": _num(v["alerts"]),
                                   "per100": _num(v.get("alerts_per_100_scored"), 1), "ppv": _pct(v.get("ppv")),
                                   "labelled": _num(v.get("labelled"))})
    model = report.get("model") or {}
    ref = report.get("reference") or {}
    suppressed = _suppressed(periods)
    base = ref.get("baseline") or {}
    figs = {k: Markup(v) for k, v in figures(report).items()}  # matplotlib's own escaped SVG
    return {
        "title": f"Monitoring: {model.get('name') or 'model'}", "model": model,
        "bundle_short": (model.get("bundle_id") or "")[:12], "report": report, "periods": rows, "alerts": alerts,
        "by_kind": [(KIND_NAMES[k], by_kind[k], k) for k in KIND_NAMES if k in by_kind],
        "suppressed_groups": suppressed,
        "first": periods[0]["start"] if periods else "–", "last": periods[-1]["end"] if periods else "–",
        "inputs": inputs[: max(int((report.get("config") or {}).get("top_features", 12)) * 2, 20)],
        "burden": burden, "burden_by_threshold": by_version, "figures": figs, "reference": ref,
        "reference_span": (f"the last {ref['months']} months of the training split" if ref.get("months")
                           else "the whole training split"),
        "reference_source": ("stored in the bundle when the model was trained" if ref.get("source") == "bundle"
                             else ref.get("source") or "rebuilt from the store"),
        "score_reference": (ref.get("score") or {}).get("rows"),
        "baseline": {"auroc": _est(base.get("auroc")), "ppv": _est(base.get("ppv"), 2),
                     "intercept": _est(base.get("calibration_intercept"), 2),
                     "slope": _est(base.get("calibration_slope"), 2)},
        "tests": report.get("tests") or {}, "level": f"{(report.get('tests') or {}).get('level', 0):.1e}",
    }


TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }}</title>
<style>
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;color:#1d2330;margin:0;background:#f6f7f9}
main{max-width:1180px;margin:0 auto;padding:24px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid
#d9dde3;padding-bottom:4px}
.meta{color:#555;font-size:13px}.meta code{font-size:12px}
.cards{display:flex;gap:10px;flex-wrap:wrap;margin:14px 0}
.card{background:#fff;border:1px solid #d9dde3;border-radius:6px;padding:8px 12px;min-width:120px}
.card b{display:block;font-size:20px}.card.alert{border-color:#c0392b;color:#8e1f14}.card.ok{border-color:#2a9d8f}
table{border-collapse:collapse;background:#fff;width:100%;font-size:12.5px;margin:6px 0}
th,td{border:1px solid #e1e4e8;padding:4px 6px;text-align:left;vertical-align:top}
th{background:#eef1f5;font-weight:600}td.n{text-align:right;white-space:nowrap}
tr.alerted td:first-child{border-left:4px solid #c0392b}tr.sev-act td:first-child{border-left:4px solid #c0392b}
tr.sev-watch td:first-child{border-left:4px solid #e08e0b}
.tag{display:inline-block;border-radius:3px;padding:0 5px;font-size:11px;background:#eee;margin-right:3px}
.tag.act{background:#f6d5d1;color:#8e1f14}.tag.watch{background:#fbe6c2;color:#7a4a00}
figure{margin:10px 0;background:#fff;border:1px solid #e1e4e8;border-radius:6px;padding:8px}
figure svg{max-width:100%;height:auto;display:block}figcaption{font-size:12px;color:#555}
ol.rules li{margin-bottom:4px}.muted{color:#777}
</style></head>
<body><main>
<h1>{{ title }}</h1>
<p class="meta">Bundle <code>{{ model.bundle_id }}</code> ({{ model.task }}, {{ model.estimator }}; threshold
{{ "%.3f"|format(model.threshold) if model.threshold is not none else "–" }}) · store
<code>{{ report.store }}</code>
· {{ report.period }}ly periods from {{ first }} to {{ last }} · data end {{ report.data_end or "–" }}
· made {{ report.created }}</p>

<section id="summary">
<div class="cards">
{% if alerts %}<div class="card alert"><b>{{ alerts|length }}</b>alert{{ "s" if alerts|length != 1 }}</div>
{% else %}<div class="card ok"><b>0</b>alerts</div>{% endif %}
{% for name, n, kind in by_kind %}<div class="card alert" data-kind="{{ kind }}">
<b>{{ n }}</b>{{ name }}</div>{% endfor %}
<div class="card"><b>{{ periods|length }}</b>periods</div>
<div class="card"><b>{{ tests.count or 0 }}</b>tests (each at p &lt; {{ level }})</div>
</div>
<p class="meta">Reference: {{ "{:,}".format(reference.rows or 0) }} training stays of
{{ "{:,}".format(reference.patients or 0) }}
patients, indexed {{ (reference.first_index or "–")[:10] }} to {{ (reference.last_index or "–")[:10] }}
({{ reference_span }}){% if score_reference is not none %}; the predicted risk's on {{ "{:,}".format(score_reference) }}
{{ reference.score_split or "training" }} stays of the same months{% endif %}; {{ reference_source }}.
Validated on the test split: AUROC {{ baseline.auroc }}, PPV at the operating point {{ baseline.ppv }}, calibration
intercept {{ baseline.intercept }}, slope {{ baseline.slope }}.</p>
{% for n in report.notes %}<p class="meta">Note: {{ n }}</p>{% endfor %}
</section>

<h2 id="alerts">Alerts</h2>
{% if alerts %}
<table id="alert-table"><thead><tr><th>Period</th><th>Kind</th><th>Concerns</th><th>Measure</th><th>Level</th>
<th>Value</th><th>Why</th></tr></thead><tbody>
{% for a in alerts %}<tr class="sev-{{ a.severity }}" data-kind="{{ a.kind }}"><td>{{ a.period }}</td>
<td>{{ a.kind_name }}</td>
<td><code>{{ a.concerns }}</code></td><td>{{ a.metric_name }}</td><td>
<span class="tag {{ a.severity }}">{{ a.severity }}</span></td>
<td class="n">{{ a.value_text }}</td><td>{{ a.reason }}</td></tr>
{% endfor %}</tbody></table>
{% else %}<p>No alerts: no finding passed both its threshold and its test in any period.</p>{% endif %}

<h2 id="drift">Input and output drift</h2>
{% if figures.get("psi_heatmap") %}<figure>{{ figures.psi_heatmap }}<figcaption>PSI of each period against the
training
reference, for the inputs that drifted most; boxed cells raised an alert (red: act, orange: watch); hatched periods
had too few stays to be tested.</figcaption></figure>{% endif %}
{% if figures.get("output") %}<figure>{{ figures.output }}<figcaption>Left: PSI of the predicted risk. Right: mean
predicted
risk and the observed readmission rate of the labelled stays. Shaded periods raised an output-drift
alert.</figcaption></figure>{% endif %}
<table id="input-table"><thead><tr><th>Input</th><th>What it is</th><th>Largest PSI</th><th>In</th>
<th>Missing (reference)</th>
<th>Missing (that period)</th><th>Alerts</th></tr></thead><tbody>
{% for r in inputs %}<tr{% if r.alerts %} class="alerted"{% endif %}><td><code>{{ r.feature }}</code></td>
<td>{{ r.label }}</td>
<td class="n">{{ r.psi_text }}</td><td>{{ r.period }}</td><td class="n">{{ r.miss_ref }}</td>
<td class="n">{{ r.miss }}</td>
<td class="n">{{ r.alerts }}</td></tr>{% endfor %}</tbody></table>

<h2 id="performance">Performance as labels mature</h2>
{% if figures.get("performance") %}<figure>{{ figures.performance }}<figcaption>Each period's stays whose 30-day
window has
closed (and which were not used to develop the model), with patient-level bootstrap 95% intervals; the band is the
validation interval.</figcaption>
</figure>{% else %}<p class="muted">No period has enough labelled stays yet.</p>{% endif %}
{% if figures.get("calibration") %}<figure>{{ figures.calibration }}<figcaption>Calibration intercept (0: right on
average) and
slope (1: right spread), with 95% intervals and the alert tolerance.</figcaption></figure>{% endif %}
{% if figures.get("subgroups") or suppressed_groups %}<h2 id="subgroups">Subgroups</h2>
{% if figures.get("subgroups") %}<figure>{{ figures.subgroups }}<figcaption>AUROC per group
(groups of at least the minimum size with 10 stays of each outcome); shaded periods raised a fairness
alert.</figcaption></figure>{% endif %}
{% if suppressed_groups %}<p>Groups not assessed (too few labelled stays, or of one outcome): no fairness alert
can be raised for them in that period.</p>
<table id="suppressed-table"><thead><tr><th>Period</th><th>Attribute</th><th>Group</th><th>Labelled stays</th>
<th>Why</th></tr></thead><tbody>
{% for s in suppressed_groups %}<tr><td>{{ s.period }}</td><td>{{ s.attribute }}</td><td>{{ s.group }}</td>
<td class="n">{{ s.n }}</td><td>{{ s.reason }}</td></tr>{% endfor %}</tbody></table>{% endif %}{% endif %}

{% if burden %}<h2 id="burden">Alert burden</h2>
{% if figures.get("burden") %}<figure>{{ figures.burden }}<figcaption>From the service's audit log and feedback:
alerts per 100
discharges against the budget; the override rate, repeat-alert share and PPV of the cards shown.</figcaption>
</figure>{% endif %}
<table id="burden-table"><thead><tr><th>Period</th><th>Calls</th><th>Alerts</th><th>Discharges</th><th>Per 100</th>
<th>PPV</th><th>NNE</th><th>Feedback</th><th>Overridden</th><th>Repeats</th><th>Repeats suppressed</th>
<th>Deferred</th></tr></thead><tbody>
{% for b in burden %}<tr><td>{{ b.label }}</td><td class="n">{{ b.calls }}</td><td class="n">{{ b.alerts }}</td>
<td class="n">{{ b.discharges }}</td><td class="n">{{ b.per100 }}</td><td class="n">{{ b.ppv }}</td>
<td class="n">{{ b.nne }}</td>
<td class="n">{{ b.feedback }}</td><td class="n">{{ b.override }}</td><td class="n">{{ b.repeat }}</td>
<td class="n">{{ b.suppressed }}</td><td class="n">{{ b.deferred }}</td></tr>{% endfor %}</tbody></table>
{% if burden_by_threshold %}<p>An administrator changed the alert threshold: the scored calls by the threshold that
decided them (alerts per 100 scored calls; PPV of the alerts whose 30-day outcome is known).</p>
<table id="burden-threshold-table"><thead><tr><th>Period</th><th>Version</th><th>Threshold</th><th>Scored</th>
<th>Alerts</th><th>Per 100 scored</th><th>PPV</th><th>Labelled</th></tr></thead><tbody>
{% for v in burden_by_threshold %}<tr><td>{{ v.label }}</td><td class="n">{{ v.version }}</td><td>{{ v.threshold }}</td>
<td class="n">{{ v.scored }}</td><td class="n">{{ v.alerts }}</td><td class="n">{{ v.per100 }}</td>
<td class="n">{{ v.ppv }}</td><td class="n">{{ v.labelled }}</td></tr>{% endfor %}</tbody></table>{% endif %}{% endif %}

<h2 id="periods">Periods</h2>
<table id="period-table"><thead><tr><th>Period</th><th>Stays</th><th>Patients</th><th>Labelled (pending)</th>
<th>AUROC</th><th>Cal. intercept</th><th>Cal. slope</th><th>PPV</th><th>Largest input PSI</th><th>Output PSI</th>
<th>Alerts</th></tr></thead><tbody>
{% for p in periods %}<tr{% if p.alerts %} class="alerted"{% endif %} data-start="{{ p.start }}">
<td>{{ p.label }}{% if not p.complete %}
<span class="tag">partial</span>{% endif %}{% if not p.tested %}
<span class="tag">too few stays</span>{% endif %}</td>
<td class="n">{{ p.stays }}</td><td class="n">{{ p.patients }}</td>
<td class="n">{{ p.labelled }} ({{ p.pending }})</td>
<td class="n">{{ p.auroc }}</td><td class="n">{{ p.intercept }}</td><td class="n">{{ p.slope }}</td>
<td class="n">{{ p.ppv }}</td>
<td>{{ p.top }}</td><td class="n">{{ p.output_psi }}</td>
<td class="n">{{ p.alerts }}{% for k in p.kinds %} <span class="tag act">{{ k }}</span>{% endfor %}</td></tr>
{% endfor %}</tbody></table>

<h2 id="rules">How alerts are raised</h2>
<ol class="rules">{% for r in report.rules %}<li>{{ r }}</li>{% endfor %}</ol>
<p class="meta">{{ tests.count or 0 }} tests in this report ({% for k, v in (tests.by_kind or {}).items() %}{{ k }}
{{ v }}{% if not loop.last %}, {% endif %}{% endfor %}): each alert's p-value is below {{ level }}.</p>
</main></body></html>
"""


@cache
def _template() -> jinja2.Template:
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=False)
    return env.from_string(TEMPLATE)


def render_html(report: dict) -> str:
    """The monitoring report page for monitor.json `report`."""
    return _template().render(**_context(report))
