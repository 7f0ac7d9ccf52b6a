"""The monitoring page's model of `careloop monitor` output (OUT/monitor.json): periods, alerts and chartable series.

The monitor's contract fixes only ``periods: [{start, end, alerts: [{kind, feature | group, ...}], ...metrics}]``;
the metrics are read generically so that the page keeps up with the monitor. Every number in a period becomes a
series named by its path (``performance.auroc``, ``input_drift.age.psi``, ``subgroups.sex=female.auroc``); a
metric written as ``{"estimate" | "value": x, "ci": [lo, hi]}`` (or ``lo``/``hi``, ``lower``/``upper``, or
sibling keys ``x_ci``, ``x_lo``/``x_hi``) keeps its interval; a list of objects named by ``feature``, ``group``,
``name`` or ``metric`` becomes a mapping by that name. One chart per (section, metric): the first and last parts
of the path, the parts between naming its series (a feature, a subgroup). Alerts are matched to charts by the
feature or group they name, or by their kind and metric.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

MAX_SERIES = 8  # lines in a line chart
MAX_ROWS = 20  # rows in a heatmap (a metric of many features or groups without intervals)
MAX_CHARTS = 30
SKIP = frozenset({"start", "end", "alerts", "label", "period", "name", "id"})
VALUE_KEYS = ("estimate", "value", "point", "mean", "est")
CI_PAIRS = (("lo", "hi"), ("low", "high"), ("lower", "upper"), ("ci_low", "ci_high"), ("ci_lower", "ci_upper"),
            ("lcl", "ucl"))
NAME_KEYS = ("feature", "group", "subgroup", "name", "metric", "column")
PERCENT_HINTS = ("rate", "share", "fraction", "missing", "ppv", "prevalence", "_pct", "override", "risk", "predicted",
                 "sensitivity", "tpr")
SECTION_ORDER = ("performance", "calibration", "output", "input", "drift", "fairness", "subgroup", "burden")
METRIC_ORDER = ("auroc", "ppv", "calibration_intercept", "calibration_slope", "observed_expected", "psi", "missing",
                "mean_risk", "flag_rate", "alerts_per_100", "alerts_per_100_discharges", "override_rate",
                "repeat_share", "nne", "alerts", "stays", "discharges")
# test statistics and bookkeeping, not quantities to watch
SKIP_LEAVES = frozenset({"p_value", "missing_p", "psi_noise", "n_boot", "clusters", "development_rows", "p_threshold",
                         "seed", "counts", "bins"})
SERIES_COUNTS = frozenset({"n", "positives", "suppressed", "flagged", "labelled", "pending"})  # per group: skipped
STRUCTURAL = frozenset({"groups", "metrics", "values", "stats", "by_group", "by_feature", "features"})
GAPS = frozenset({"gaps", "gap", "differences"})


@dataclass
class Chart:
    key: tuple[str, str]
    title: str
    labels: list[str]
    series: list[dict]
    hidden: int = 0
    alert_periods: list[int] = field(default_factory=list)
    percent: bool = False
    threshold: float | None = None  # the monitor's alert threshold for this metric, when its config names one
    kind: str = "lines"  # or "heatmap": many series (features) without intervals, one row each


def load(monitor_dir: Path | None) -> tuple[dict | None, str | None]:
    """(monitor.json, None) or (None, why not)."""
    if monitor_dir is None:
        return None, "no monitoring output is configured for this dashboard"
    path = Path(monitor_dir) / "monitor.json"
    if not path.is_file():
        return None, "monitoring has not run yet (no monitor.json)"
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        return None, f"monitor.json is unreadable: {str(e)[:200]}"
    if not isinstance(doc, dict) or not isinstance(doc.get("periods"), list):
        return None, "monitor.json has no periods list"
    return doc, None


def _finite(v: object) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        return None
    return float(v)


def _pair(v: object) -> tuple[float | None, float | None] | None:
    if isinstance(v, list | tuple) and len(v) == 2:
        return _finite(v[0]), _finite(v[1])
    if isinstance(v, dict):
        for a, b in CI_PAIRS:
            if a in v and b in v:
                return _finite(v[a]), _finite(v[b])
    return None


def _metric(d: dict) -> tuple[float | None, float | None, float | None] | None:
    """A metric object: its value and interval, or None if `d` is not one."""
    key = next((k for k in VALUE_KEYS if k in d), None)
    if key is None or (d[key] is not None and _finite(d[key]) is None):
        return None
    lo = hi = None
    ci = next((d[k] for k in ("ci", "ci95", "interval", "ci_95") if k in d), None)
    p = _pair(ci) if ci is not None else _pair(d)
    if p:
        lo, hi = p
    return _finite(d[key]), lo, hi


def _name_of(item: dict) -> str | None:
    for k in NAME_KEYS:
        v = item.get(k)
        if isinstance(v, str | int) and not isinstance(v, bool):
            if k in ("group", "subgroup") and isinstance(item.get("attribute"), str):
                return f"{item['attribute']}={v}"
            return str(v)
    return None


def flatten(obj: object, path: tuple[str, ...] = (), out: dict | None = None) -> dict:
    """{path: (value, lo, hi)} for every number and metric object under `obj`."""
    out = {} if out is None else out
    v = _finite(obj)
    if v is not None:
        out[path] = (v, None, None)
        return out
    if isinstance(obj, dict):
        m = _metric(obj) if path else None
        if m is not None:
            out[path] = m
            return out
        used: set[str] = set()
        for k, val in obj.items():
            if not isinstance(k, str) or (not path and k in SKIP) or k in used:
                continue
            if _finite(val) is not None:
                lo = hi = None
                for suffix in ("_ci", "_ci95"):
                    if _pair(obj.get(k + suffix)):
                        lo, hi = _pair(obj[k + suffix])  # type: ignore[misc]
                        used.add(k + suffix)
                for a, b in CI_PAIRS:
                    if f"{k}_{a}" in obj and f"{k}_{b}" in obj:
                        lo, hi = _finite(obj[f"{k}_{a}"]), _finite(obj[f"{k}_{b}"])
                        used |= {f"{k}_{a}", f"{k}_{b}"}
                out[(*path, k)] = (_finite(val), lo, hi)
            elif k not in ("ci", "ci95", "interval"):
                flatten(val, (*path, k), out)
        for k in used:
            for p in [p for p in out if p == (*path, k)]:
                del out[p]
        return out
    if isinstance(obj, list) and obj and all(isinstance(x, dict) for x in obj):
        for item in obj:
            name = _name_of(item)
            if name is None:
                continue
            rest = {k: v for k, v in item.items() if k not in NAME_KEYS and k != "attribute"}
            flatten(rest, (*path, name), out)
    return out


def period_label(p: dict, i: int) -> str:
    if isinstance(p.get("label"), str) and p["label"]:
        return p["label"][:16]
    s = str(p.get("start") or "")
    return s[:7] if len(s) >= 10 and s[8:10] == "01" else s[:10] or f"period {i + 1}"


def alert_names(a: dict) -> set[str]:
    """The names an alert concerns: its feature or group (with and without the attribute), metric and kind."""
    names = set()
    for k in ("feature", "group", "subgroup", "metric", "kind", "column"):
        v = a.get(k)
        if isinstance(v, str) and v:
            names.add(v)
            if "=" in v:
                names.add(v.split("=", 1)[1])
    if isinstance(a.get("attribute"), str) and isinstance(a.get("group"), str):
        names.add(f"{a['attribute']}={a['group']}")
    return names


def _humanize(text: str) -> str:
    return text.replace("_", " ").strip()


def _sort_key(key: tuple[str, str]) -> tuple[int, str, int, str]:
    sec = key[0].lower()
    rank = next((i for i, s in enumerate(SECTION_ORDER) if s in sec), len(SECTION_ORDER))
    metric = key[1].removesuffix(" gap")
    order = METRIC_ORDER.index(metric) if metric in METRIC_ORDER else len(METRIC_ORDER)
    return rank, key[0], order, key[1]


def placement(path: tuple[str, ...]) -> tuple[tuple[str, str], tuple[str, ...]] | None:
    """Where a flattened number goes: (chart key (section, metric), series name parts), or None to leave it out.

    Structural parts of the path (``groups``, ``metrics``) are dropped from series names; a ``gaps`` part makes a
    separate "<metric> gap" chart; ``X_reference`` joins the chart of ``X`` as its "reference" line.
    """
    leaf = path[-1]
    if leaf in SKIP_LEAVES:
        return None
    if len(path) == 1:
        return ("", leaf), ()
    middle = path[1:-1]
    metric = f"{leaf} gap" if any(m in GAPS for m in middle) else leaf
    middle = tuple(m for m in middle if m not in STRUCTURAL and m not in GAPS)
    if middle and leaf in SERIES_COUNTS:
        return None
    if leaf.endswith("_reference"):
        return None if middle else ((path[0], leaf.removesuffix("_reference")), ("reference",))
    return (path[0], metric), middle


def charts(doc: dict, limit: int | None = MAX_CHARTS) -> list[Chart]:
    """The charts of a monitor.json, at most `limit` (those with alerts kept first), in reading order."""
    periods = [p for p in doc.get("periods") or [] if isinstance(p, dict)]
    labels = [period_label(p, i) for i, p in enumerate(periods)]
    flat = [flatten(p) for p in periods]
    alerts = [[a for a in p.get("alerts") or [] if isinstance(a, dict)] for p in periods]
    groups: dict[tuple[str, str], dict[tuple[str, ...], list]] = {}
    for i, f in enumerate(flat):
        for path, val in f.items():
            placed = placement(path)
            if placed is None:
                continue
            key, middle = placed
            groups.setdefault(key, {}).setdefault(middle, [None] * len(periods))[i] = val
    limits = _thresholds(doc)
    out = []
    for key in sorted(groups, key=_sort_key):
        series = []
        alert_periods = []
        for middle, vals in groups[key].items():
            if all(v is None or v[0] is None for v in vals):
                continue
            hits = [] if middle == ("reference",) else sorted(
                {i for i, al in enumerate(alerts) for a in al if concerns(a, key, middle)})
            series.append({"name": " · ".join(middle) or _humanize(key[1]),
                           "values": [v[0] if v else None for v in vals],
                           "lo": [v[1] if v else None for v in vals], "hi": [v[2] if v else None for v in vals],
                           "alerts": hits, "peak": max((abs(v[0]) for v in vals if v and v[0] is not None),
                                                       default=0.0)})
            alert_periods += hits
        if not series:
            continue
        series.sort(key=lambda s: (not s["alerts"], s["name"] == "reference", -s["peak"], s["name"]))
        intervals = any(v is not None for s in series for v in s["lo"])
        kind = "heatmap" if len(series) > 4 and not intervals else "lines"
        shown = series[:MAX_ROWS if kind == "heatmap" else MAX_SERIES]
        title = " · ".join(_humanize(k) for k in key if k)
        low = title.lower()
        values = [v for s in shown for v in s["values"] if v is not None]
        percent = any(h in low for h in PERCENT_HINTS) and bool(values) and all(0 <= v <= 1 for v in values)
        out.append(Chart(key, title, labels, shown, len(series) - len(shown), sorted(set(alert_periods)), percent,
                         limits.get(key[1]), kind))
    if limit is not None and len(out) > limit:
        keep = {id(c) for c in sorted(out, key=lambda c: not c.alert_periods)[:limit]}
        out = [c for c in out if id(c) in keep]
    return out


def _thresholds(doc: dict) -> dict[str, float]:
    """Alert thresholds by metric name from the run's config (``thresholds``, ``config.thresholds`` or ``config``)."""
    for cand in (doc.get("thresholds"), (doc.get("config") or {}).get("thresholds")
                 if isinstance(doc.get("config"), dict) else None, doc.get("config")):
        if isinstance(cand, dict):
            out = {}
            for k, v in cand.items():
                if isinstance(v, dict):  # {"watch": 0.1, "act": 0.25}: the level that raises an alert
                    v = next((v[x] for x in ("act", "alert", "threshold", "limit") if x in v), None)
                if isinstance(k, str) and _finite(v) is not None:
                    out[k] = float(v)
            return out
    return {}


def _related(a: str, b: str) -> bool:
    """Metric names that denote the same quantity: equal, or one a prefix of the other (auroc, auroc_gap)."""
    a, b = a.lower(), b.lower()
    return a == b or a.startswith(b) or b.startswith(a)


def concerns(alert: dict, key: tuple[str, str], middle: tuple[str, ...]) -> bool:
    """Whether `alert` is about the series `middle` of the chart `key` (section, metric).

    An alert naming a feature or group concerns the series of that feature or group, in charts of its metric when
    it names one. An alert naming neither concerns the charts of its metric in its kind's section (or charts
    without per-feature series), or, without a metric, every chart of its kind's section.
    """
    section, metric = key
    kind = str(alert.get("kind") or "")
    am = alert.get("metric") if isinstance(alert.get("metric"), str) else None
    targets = {n for n in alert_names(alert) if n not in (kind, am)}
    if targets:
        return bool(targets & set(middle)) and (am is None or _related(am, metric))
    in_section = bool(kind) and bool(section) and (_related(kind, section) or kind.lower() in section.lower())
    if am is not None:
        return _related(am, metric) and (in_section or not middle)
    return in_section or (bool(kind) and kind.lower() in metric.lower())


ALERT_NUMBERS = ("metric", "value", "threshold", "baseline", "severity", "n", "p_value")


def alert_rows(doc: dict) -> list[dict]:
    """Every alert with its period, for the alerts table: kind, what it concerns (feature or group), its reason in
    full, and its numbers (metric, value, threshold, severity, n, p) in short."""
    rows = []
    for i, p in enumerate(doc.get("periods") or []):
        if not isinstance(p, dict):
            continue
        for a in p.get("alerts") or []:
            if not isinstance(a, dict):
                continue
            concerns = a.get("feature") or a.get("group") or a.get("subgroup") or ""
            if a.get("attribute") and a.get("group") and "=" not in str(a["group"]):
                concerns = f"{a['attribute']}={a['group']}"
            numbers = "; ".join(f"{k.replace('_', ' ')} {_short(a[k], 40)}" for k in ALERT_NUMBERS
                                if a.get(k) is not None)
            reason = a.get("reason") or a.get("message") or ""
            rows.append({"period": period_label(p, i), "start": p.get("start"), "end": p.get("end"),
                         "kind": a.get("kind"), "concerns": str(concerns), "reason": _short(reason, 800),
                         "numbers": numbers})
    return rows


def alert_counts(doc: dict) -> tuple[list[str], dict[str, list[int]]]:
    periods = [p for p in doc.get("periods") or [] if isinstance(p, dict)]
    counts: dict[str, list[int]] = {}
    for i, p in enumerate(periods):
        for a in p.get("alerts") or []:
            if isinstance(a, dict):
                counts.setdefault(str(a.get("kind") or "other"), [0] * len(periods))[i] += 1
    return [period_label(p, i) for i, p in enumerate(periods)], counts


def summary(doc: dict) -> list[tuple[str, str | list[str]]]:
    """Top-level facts of the monitoring run, for a key-value table: scalars as text, objects as ``key: value``
    pairs (shortened), lists of sentences (the alert rules, notes) as lists."""
    out: list[tuple[str, str | list[str]]] = []
    for k, v in doc.items():
        if k in ("periods", "reference") or not isinstance(k, str):
            continue
        if isinstance(v, list) and v and all(isinstance(x, str) for x in v):
            out.append((_humanize(k), [_short(x, 600) for x in v[:30]]))
        elif isinstance(v, dict):
            out.append((_humanize(k), "; ".join(f"{a}: {_short(b, 120)}" for a, b in list(v.items())[:20])))
        elif not isinstance(v, list):
            out.append((_humanize(k), _short(v)))
    return out[:40]


def _short(v: object, width: int = 160) -> str:
    if isinstance(v, float):
        text = f"{v:.4g}"
    elif isinstance(v, str):
        text = v
    else:
        text = json.dumps(v, default=str)
    return text if len(text) <= width else text[: width - 1] + "…"


__all__ = ["Chart", "alert_counts", "alert_rows", "charts", "concerns", "flatten", "load", "placement", "summary"]
