"""The monitoring report's figures as inline SVG, drawn with matplotlib's object API (no pyplot, no global state).

Each function takes monitor.json (a `MonitorResult.to_dict()`) and returns one `<svg>` element, or None when there
is nothing to draw. Periods with an alert of the figure's kind are marked in red (a shaded column and a red
point), so the charts show where the alerts are without the table.
"""

from __future__ import annotations

import io
import re

import matplotlib
import numpy as np
from matplotlib.colors import LinearSegmentedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

__all__ = ["burden_svg", "calibration_svg", "output_svg", "performance_svg", "psi_heatmap_svg", "subgroups_svg"]

BLUE = "#1f4e9c"
GREY = "#7a7a7a"
ALERT = "#c0392b"
WATCH = "#e08e0b"
BAND = "#dbe4f3"
PALETTE = ("#1f4e9c", "#d9822b", "#2a9d8f", "#8e5ea2", "#7a7a7a", "#b5483d", "#5b8e23", "#c9a227")
_RC = {"svg.fonttype": "none", "font.family": "sans-serif", "font.size": 9, "axes.spines.top": False,
       "axes.spines.right": False, "axes.grid": True, "grid.color": "#e6e6e6", "grid.linewidth": 0.6,
       "legend.frameon": False, "legend.fontsize": 8}
_REF = re.compile(r'(\sid="|href="#|url\(#)([^")]+)')
_HEAT = LinearSegmentedColormap.from_list("psi", ["#f7fbff", "#fde0a6", "#f39c4a", "#c0392b", "#7b1111"])


def _svg(fig: Figure, name: str, title: str) -> str:
    buf = io.StringIO()
    with matplotlib.rc_context({**_RC, "svg.hashsalt": f"careloop-monitor-{name}"}):
        fig.savefig(buf, format="svg", metadata={"Date": None, "Title": title})
    text = buf.getvalue()
    svg = text[text.index("<svg"):]
    svg = _REF.sub(lambda m: f"{m.group(1)}{name}-{m.group(2)}", svg)
    label = title.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;").replace(">", "&gt;")
    return svg.replace("<svg ", f'<svg role="img" aria-label="{label}" data-figure="{name}" ', 1)


def _figure(width: float, height: float) -> Figure:
    with matplotlib.rc_context(_RC):
        return Figure(figsize=(width, height), layout="constrained")


def _t(text: object) -> str:
    return str(text).replace("$", r"\$")


def _labels(report: dict) -> list[str]:
    return [p.get("label") or p["start"] for p in report.get("periods") or []]


def _xaxis(ax, labels: list[str]) -> None:
    x = np.arange(len(labels))
    step = max(1, len(labels) // 12)
    ax.set_xticks(x[::step])
    ax.set_xticklabels([labels[i] for i in x[::step]], rotation=45 if len(labels) > 6 else 0,
                       ha="right" if len(labels) > 6 else "center")
    ax.set_xlim(-0.6, len(labels) - 0.4)


def _alerted(report: dict, kinds: tuple[str, ...], metrics: tuple[str, ...] | None = None) -> list[int]:
    out = []
    for i, p in enumerate(report.get("periods") or []):
        if any(a["kind"] in kinds and (metrics is None or a.get("metric") in metrics) for a in p["alerts"]):
            out.append(i)
    return out


def _shade(ax, idx: list[int]) -> None:
    for i in idx:
        ax.axvspan(i - 0.45, i + 0.45, color=ALERT, alpha=0.10, lw=0, zorder=0, gid=f"alert-period-{ax_id(ax)}-{i}")


def ax_id(ax) -> int:
    """The axes' position in its figure (for unique element ids)."""
    return ax.figure.axes.index(ax)


def _est(d: dict | None) -> tuple[float, float, float]:
    if not d or d.get("estimate") is None:
        return np.nan, np.nan, np.nan
    ci = d.get("ci") or [np.nan, np.nan]
    return float(d["estimate"]), float(ci[0]) if ci[0] is not None else np.nan, float(ci[1]) \
        if ci[1] is not None else np.nan


def _errorbars(ax, x, est, lo, hi, color, label, alerted: list[int]):
    est, lo, hi = np.asarray(est), np.asarray(lo), np.asarray(hi)
    ok = np.isfinite(est)
    if not ok.any():
        return None
    yerr = np.vstack([np.where(np.isfinite(lo), est - lo, 0), np.where(np.isfinite(hi), hi - est, 0)])
    art = ax.errorbar(x[ok], est[ok], yerr=yerr[:, ok], fmt="o-", color=color, ms=4, lw=1.2, capsize=2,
                      label=label)
    bad = [i for i in alerted if ok[i]]
    if bad:
        ax.plot(x[bad], est[bad], "o", color=ALERT, ms=7, zorder=5, gid=f"alert-marker-{ax_id(ax)}")
    return art


def psi_heatmap_svg(report: dict) -> str | None:
    """PSI of the inputs that drifted most (rows) by period (columns); input-drift alerts boxed (act: red,
    watch: orange), periods too small to test hatched."""
    periods = report.get("periods") or []
    if not periods:
        return None
    top = int((report.get("config") or {}).get("top_features", 12))
    worst: dict[str, float] = {}
    alerted: dict[str, bool] = {}
    for p in periods:
        for r in p["input_drift"]:
            if r.get("psi") is not None:
                worst[r["feature"]] = max(worst.get(r["feature"], 0.0), r["psi"])
        for a in p["alerts"]:
            if a["kind"] == "input_drift":
                alerted[a["feature"]] = True
    if not worst:
        return None
    rows = sorted(worst, key=lambda f: (not alerted.get(f, False), -worst[f]))[:top]
    labels = _labels(report)
    m = np.full((len(rows), len(periods)), np.nan)
    for j, p in enumerate(periods):
        by = {r["feature"]: r["psi"] for r in p["input_drift"]}
        for i, f in enumerate(rows):
            if by.get(f) is not None:
                m[i, j] = by[f]
    act = float((report.get("config") or {}).get("psi", {}).get("act", 0.25))
    vmax = max(2 * act, float(np.nanmax(m)) if np.isfinite(m).any() else act)
    fig = _figure(max(5.0, 1.6 + 0.42 * len(periods)), 0.9 + 0.28 * len(rows))
    ax = fig.add_subplot()
    ax.grid(False)
    im = ax.imshow(m, aspect="auto", cmap=_HEAT, vmin=0, vmax=vmax, interpolation="nearest")
    im.set_gid("psi-cells")
    ax.set_yticks(np.arange(len(rows)))
    ax.set_yticklabels([_t(f) for f in rows])
    _xaxis(ax, labels)
    ax.set_ylim(len(rows) - 0.5, -0.5)
    small = len(rows) * len(periods) <= 220
    for j, p in enumerate(periods):
        if not p.get("tested", True):
            ax.add_patch(Rectangle((j - 0.5, -0.5), 1, len(rows), fill=False, hatch="///", lw=0, ec="#bbbbbb"))
        marks = {a["feature"]: a["severity"] for a in p["alerts"] if a["kind"] == "input_drift"}
        for i, f in enumerate(rows):
            if small and np.isfinite(m[i, j]):
                ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=6.5,
                        color="white" if m[i, j] > 0.6 * vmax else "#333333")
            if f in marks:
                ax.add_patch(Rectangle((j - 0.47, i - 0.47), 0.94, 0.94, fill=False, lw=1.8,
                                       ec=ALERT if marks[f] == "act" else WATCH, gid=f"alert-cell-{i}-{j}"))
    cb = fig.colorbar(im, ax=ax, shrink=0.8, pad=0.01)
    cb.set_label("PSI")
    return _svg(fig, "psi-heatmap", "PSI of the model inputs by period, alerts boxed")


def output_svg(report: dict) -> str | None:
    """Output drift: PSI of the predicted risk by period (watch and act lines), and the mean predicted risk beside
    the observed readmission rate once labels are in."""
    periods = report.get("periods") or []
    if not periods:
        return None
    labels = _labels(report)
    x = np.arange(len(periods))
    cfg = (report.get("config") or {}).get("psi", {})
    fig = _figure(7.2, 2.7)
    ax1, ax2 = fig.subplots(1, 2)
    v = np.array([p["output_drift"].get("psi") if p["output_drift"].get("psi") is not None else np.nan
                  for p in periods])
    ax1.plot(x, v, "o-", color=BLUE, ms=4, lw=1.2, label="PSI of the risk")
    for level, name, color in ((cfg.get("watch", 0.1), "watch", WATCH), (cfg.get("act", 0.25), "act", ALERT)):
        ax1.axhline(level, color=color, lw=0.9, ls="--", label=name)
    bad = _alerted(report, ("output_drift",))
    _shade(ax1, bad)
    if bad:
        ax1.plot(x[bad], v[bad], "o", color=ALERT, ms=7, gid="alert-marker-0")
    ax1.set_ylim(bottom=0)
    ax1.set_ylabel("PSI")
    ax1.set_title("Output drift", loc="left", fontsize=9)
    _xaxis(ax1, labels)
    ax1.legend(loc="best")
    mean = np.array([p["output_drift"].get("mean_risk") if p["output_drift"].get("mean_risk") is not None
                     else np.nan for p in periods])
    obs = np.array([(p["performance"] or {}).get("observed_rate", np.nan) if (p["performance"] or {}).get(
        "evaluated") else np.nan for p in periods], dtype=float)
    ax2.plot(x, mean, "o-", color=BLUE, ms=4, lw=1.2, label="mean predicted risk")
    ax2.plot(x, obs, "s--", color=PALETTE[1], ms=4, lw=1.2, label="observed rate (labelled stays)")
    ref = (report.get("reference") or {}).get("mean_risk")
    if ref is not None:
        ax2.axhline(ref, color=GREY, lw=0.9, ls=":", label="reference mean risk")
    ax2.set_ylim(bottom=0)
    ax2.set_title("Predicted and observed risk", loc="left", fontsize=9)
    _xaxis(ax2, labels)
    ax2.legend(loc="best")
    return _svg(fig, "output", "Output drift and predicted against observed risk by period")


def performance_svg(report: dict) -> str | None:
    """AUROC and PPV at the operating point by period with 95% intervals, against the validated value and its
    interval (band); periods with a performance alert marked."""
    periods = report.get("periods") or []
    if not any((p["performance"] or {}).get("evaluated") for p in periods):
        return None
    labels = _labels(report)
    x = np.arange(len(periods))
    base = (report.get("reference") or {}).get("baseline") or {}
    fig = _figure(7.2, 2.7)
    axes = fig.subplots(1, 2)
    for ax, metric, title in ((axes[0], "auroc", "AUROC"), (axes[1], "ppv", "PPV at the operating point")):
        e = np.array([_est((p["performance"] or {}).get(metric)) for p in periods])
        b = _est(base.get(metric))
        if np.isfinite(b[0]):
            if np.isfinite(b[1]):
                ax.axhspan(b[1], b[2], color=BAND, lw=0, label="validation 95% CI")
            ax.axhline(b[0], color=GREY, lw=1, ls="--", label="validation")
        bad = _alerted(report, ("performance",), (metric,))
        _shade(ax, bad)
        _errorbars(ax, x, e[:, 0], e[:, 1], e[:, 2], BLUE, "period (95% CI)", bad)
        ax.set_title(title, loc="left", fontsize=9)
        _xaxis(ax, labels)
        ax.legend(loc="best")
    return _svg(fig, "performance", "AUROC and PPV by period with 95% intervals against validation")


def calibration_svg(report: dict) -> str | None:
    """Calibration intercept and slope by period with 95% intervals, the ideal (0, 1) and the alert tolerance."""
    periods = report.get("periods") or []
    if not any((p["performance"] or {}).get("evaluated") for p in periods):
        return None
    labels = _labels(report)
    x = np.arange(len(periods))
    cfg = report.get("config") or {}
    fig = _figure(7.2, 2.7)
    axes = fig.subplots(1, 2)
    for ax, metric, centre, tol, title in (
            (axes[0], "calibration_intercept", 0.0, cfg.get("calibration_intercept", 0.3), "Calibration intercept"),
            (axes[1], "calibration_slope", 1.0, None, "Calibration slope (reported, no alert)")):
        e = np.array([_est((p["performance"] or {}).get(metric)) for p in periods])
        if tol is not None:
            ax.axhspan(centre - tol, centre + tol, color=BAND, lw=0, label=f"alert beyond {centre:g} ± {tol:g}")
        ax.axhline(centre, color=GREY, lw=1, ls="--")
        bad = _alerted(report, ("calibration",), (metric,))
        _shade(ax, bad)
        _errorbars(ax, x, e[:, 0], e[:, 1], e[:, 2], BLUE, "period (95% CI)", bad)
        ax.set_title(title, loc="left", fontsize=9)
        _xaxis(ax, labels)
        ax.legend(loc="best")
    return _svg(fig, "calibration", "Calibration intercept and slope by period with 95% intervals")


def burden_svg(report: dict) -> str | None:
    """Alerts per 100 discharges (bars) against the budget, and the override rate, repeat-alert share and PPV of
    the cards shown, by period."""
    periods = report.get("periods") or []
    if not any(p.get("burden") for p in periods):
        return None
    labels = _labels(report)
    x = np.arange(len(periods))
    fig = _figure(7.2, 2.7)
    ax1, ax2 = fig.subplots(1, 2)
    rate = np.array([(p.get("burden") or {}).get("alerts_per_100") if (p.get("burden") or {}).get(
        "alerts_per_100") is not None else np.nan for p in periods], dtype=float)
    bad = _alerted(report, ("burden",), ("alerts_per_100",))
    colors = [ALERT if i in bad else BLUE for i in range(len(periods))]
    bars = ax1.bar(x, np.nan_to_num(rate), color=colors, width=0.7, label="alerts per 100 discharges")
    for i, patch in enumerate(bars.patches):
        patch.set_gid(f"alerts-per-100-{i}")
    base = (report.get("reference") or {}).get("baseline") or {}
    if base.get("policy") == "budget" and base.get("target"):
        ax1.axhline(100 * base["target"], color=GREY, ls="--", lw=1, label="budget")
    ax1.set_title("Alerts per 100 discharges", loc="left", fontsize=9)
    _xaxis(ax1, labels)
    ax1.legend(loc="best")
    for i, (key, name) in enumerate((("override_rate", "override rate"), ("repeat_share", "repeat-alert share"),
                                     ("ppv", "PPV of the cards shown"))):
        v = np.array([(p.get("burden") or {}).get(key) if (p.get("burden") or {}).get(key) is not None else np.nan
                      for p in periods], dtype=float)
        ax2.plot(x, v, "o-", color=PALETTE[i], ms=4, lw=1.2, label=name)
    bad2 = _alerted(report, ("burden",), ("override_rate", "repeat_share", "alert_ppv"))
    _shade(ax2, bad2)
    ax2.set_ylim(0, 1)
    ax2.set_title("Feedback and yield", loc="left", fontsize=9)
    _xaxis(ax2, labels)
    ax2.legend(loc="best")
    return _svg(fig, "burden", "Alert burden by period")


def subgroups_svg(report: dict) -> str | None:
    """AUROC per reported group by period, one panel per attribute (groups reported in at least one period)."""
    periods = report.get("periods") or []
    attrs: dict[str, dict[str, str]] = {}
    for p in periods:
        for attr, res in (p.get("subgroups") or {}).items():
            if isinstance(res, dict) and "groups" in res:
                for g in res["groups"]:
                    attrs.setdefault(attr, {})[g["group"]] = g["label"]
    attrs = {a: g for a, g in attrs.items() if g}
    if not attrs:
        return None
    labels = _labels(report)
    x = np.arange(len(periods))
    cols = min(3, len(attrs))
    nrows = -(-len(attrs) // cols)
    fig = _figure(2.6 * cols + 0.6, 2.2 * nrows + 0.3)
    axes = np.atleast_1d(fig.subplots(nrows, cols)).ravel()
    for ax, (attr, groups) in zip(axes, sorted(attrs.items()), strict=False):
        for i, (g, label) in enumerate(sorted(groups.items(), key=lambda kv: kv[1])):
            v = []
            for p in periods:
                res = (p.get("subgroups") or {}).get(attr) or {}
                row = next((r for r in res.get("groups", []) if r["group"] == g), None)
                v.append(_est(row["metrics"]["auroc"])[0] if row else np.nan)
            ax.plot(x, v, "o-", ms=3, lw=1, color=PALETTE[i % len(PALETTE)], label=_t(label)[:22])
        bad = [i for i, p in enumerate(periods)
               if any(a["kind"] == "fairness" and a.get("attribute") == attr for a in p["alerts"])]
        _shade(ax, bad)
        ax.set_title(_t(attr), loc="left", fontsize=9)
        _xaxis(ax, labels)
        ax.legend(loc="best", fontsize=6)
    for ax in axes[len(attrs):]:
        ax.set_visible(False)
    return _svg(fig, "subgroups", "AUROC by subgroup and period")
