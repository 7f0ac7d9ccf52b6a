"""The report's figures as inline SVG strings, drawn with matplotlib's object API (no pyplot, no global state).

Each function takes report.json and returns one `<svg>` element (or None when the report has nothing to draw).
Output is deterministic: SVG ids are salted per figure, no date is written, and text stays text (`svg.fonttype`
"none"), so the page is searchable and small.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import re

import matplotlib
from matplotlib.figure import Figure

from careloop.reports._format import estimate, interval, metric_name, number, primary, scores

__all__ = ["calibration_svg", "decision_curve_svg", "figures", "forest_svg", "importance_svg", "roc_svg"]

PRIMARY = "#1f4e9c"
OTHERS = ("#d9822b", "#2a9d8f", "#8e5ea2", "#7a7a7a", "#b5483d", "#5b8e23")
FLAG = "#c0392b"
_RC = {"svg.fonttype": "none", "font.family": "sans-serif", "font.size": 9, "axes.spines.top": False,
       "axes.spines.right": False, "axes.grid": True, "grid.color": "#e6e6e6", "grid.linewidth": 0.6,
       "legend.frameon": False, "legend.fontsize": 8}


def _svg(fig: Figure, name: str, title: str) -> str:
    buf = io.StringIO()
    with matplotlib.rc_context({**_RC, "svg.hashsalt": f"careloop-{name}"}):
        fig.savefig(buf, format="svg", metadata={"Date": None, "Title": title})
    text = buf.getvalue()
    svg = text[text.index("<svg"):]
    # ids unique in the page (every figure has its "axes_1"): prefix each id and every reference to it
    svg = _REF.sub(lambda m: f"{m.group(1)}{name}-{m.group(2)}", svg)
    # an accessible name for screen readers; CSS sizes the figure (the viewBox keeps its proportions)
    return svg.replace("<svg ", f'<svg role="img" aria-label="{_attr(title)}" ', 1)


_REF = re.compile(r'(\sid="|href="#|url\(#)([^")]+)')


def _series(artists: list) -> None:
    """Name the artists that draw data ("<plot>-series-<i>" in the page), so a reader or a test can find them."""
    for i, artist in enumerate(artists, 1):
        artist.set_gid(f"series-{i}")


def _attr(text: str) -> str:
    return text.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;").replace(">", "&gt;")


def _t(text: object) -> str:
    """Text for matplotlib, with mathtext's dollar signs taken literally."""
    return str(text).replace("$", r"\$")


def _figure(width: float, height: float) -> Figure:
    with matplotlib.rc_context(_RC):
        return Figure(figsize=(width, height), layout="constrained")


def _colors(report: dict) -> dict[str, str]:
    names = [n for n, _ in scores(report)]
    first = report.get("primary")
    others = [n for n in names if n != first]
    return {first: PRIMARY, **{n: OTHERS[i % len(OTHERS)] for i, n in enumerate(others)}}


def _auroc(ev: dict) -> str:
    return f"{estimate((ev.get('metrics') or {}).get('auroc')) or float('nan'):.3f}"


def roc_svg(report: dict) -> str | None:
    """ROC curves of every score on the test stays, with the chance diagonal."""
    colors = _colors(report)
    with matplotlib.rc_context(_RC):
        fig = _figure(5.2, 4.4)
        ax = fig.subplots()
        data: list = []
        drawn = False
        for name, ev in scores(report):
            roc = ev.get("roc_curve") or {}
            fpr, tpr = roc.get("fpr") or [], roc.get("tpr") or []
            if len(fpr) < 2 or len(fpr) != len(tpr):
                continue
            data += ax.plot(fpr, tpr, color=colors.get(name, "#555"),
                            lw=2.2 if name == report.get("primary") else 1.4, label=_t(f"{name} (AUROC {_auroc(ev)})"))
            drawn = True
        if not drawn:
            return None
        ax.plot([0, 1], [0, 1], ls="--", color="#999", lw=1, label="chance")
        ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="1 − specificity (false-positive rate)",
               ylabel="sensitivity (true-positive rate)", title="ROC curves, test split")
        ax.set_aspect("equal")
        ax.legend(loc="lower right")
        _series(data)
        return _svg(fig, "roc", "ROC curves of every score on the test split")


def calibration_svg(report: dict) -> str | None:
    """Observed against predicted risk of the primary score by decile, with Wilson 95% intervals and the diagonal."""
    ev = primary(report)
    rows = [r for r in ev.get("calibration_curve") or []
            if number(r.get("mean_predicted")) is not None and number(r.get("observed")) is not None]
    if not rows:
        return None
    x = [r["mean_predicted"] for r in rows]
    y = [r["observed"] for r in rows]
    lo = [max(0.0, y_ - (interval(r) or (y_, y_))[0]) for r, y_ in zip(rows, y, strict=True)]
    hi = [max(0.0, (interval(r) or (y_, y_))[1] - y_) for r, y_ in zip(rows, y, strict=True)]
    top = max([*x, *y, *(y_ + h for y_, h in zip(y, hi, strict=True))]) * 1.08
    top = min(1.0, max(top, 0.05))
    m = ev.get("metrics") or {}
    with matplotlib.rc_context(_RC):
        fig = _figure(5.2, 4.4)
        ax = fig.subplots()
        ax.plot([0, top], [0, top], ls="--", color="#999", lw=1, label="perfect calibration")
        bars = ax.errorbar(x, y, yerr=[lo, hi], fmt="o-", color=PRIMARY, ecolor="#7f9cc9", elinewidth=1.2,
                           capsize=3, ms=4.5, lw=1.4, label="observed (95% CI), by decile of risk")
        _series([bars.lines[0], *bars.lines[2]])
        ax.set(xlim=(0, top), ylim=(0, top), xlabel="mean predicted risk", ylabel="observed proportion",
               title=_t(f"Calibration of {report.get('primary')}, test split"))
        ax.set_aspect("equal")
        ax.text(0.02, 0.97, f"slope {_v(m.get('calibration_slope'))}, intercept "
                f"{_v(m.get('calibration_intercept'))}\nobserved/expected {_v(m.get('observed_expected'))}",
                transform=ax.transAxes, va="top", fontsize=8, color="#333")
        if not ev.get("probabilistic", True):
            ax.text(0.02, 0.86, "after logistic recalibration\n(the score is not a probability)",
                    transform=ax.transAxes, va="top", fontsize=7.5, color="#666")
        ax.legend(loc="lower right")
        return _svg(fig, "calibration", "Calibration curve of the primary score with 95% intervals")


def _v(e: object) -> str:
    v = estimate(e)
    return "n/a" if v is None else f"{v:.2f}"


def decision_curve_svg(report: dict) -> str | None:
    """Net benefit of each score against treating everyone and treating no one, over risk thresholds."""
    colors = _colors(report)
    first = report.get("primary")
    with matplotlib.rc_context(_RC):
        fig = _figure(6.4, 4.2)
        ax = fig.subplots()
        data: list = []
        values: list[float] = []
        treat_all: list[tuple[float, float]] = []
        for name, ev in scores(report):
            rows = [r for r in ev.get("decision_curve") or [] if number(r.get("threshold")) is not None]
            pts = [(r["threshold"], estimate(r.get("net_benefit"))) for r in rows]
            pts = [(t, v) for t, v in pts if v is not None]
            if len(pts) < 2:
                continue
            if name == first:
                band = [(r["threshold"], interval(r.get("net_benefit"))) for r in rows]
                band = [(t, ci) for t, ci in band if ci is not None]
                if band:
                    values += [c[1] for _, c in band]
                    data.append(ax.fill_between([t for t, _ in band], [c[0] for _, c in band],
                                                [c[1] for _, c in band], color=PRIMARY, alpha=0.13, lw=0,
                                                label=_t(f"{name} 95% CI")))
                treat_all = [(r["threshold"], number(r.get("treat_all"))) for r in rows
                             if number(r.get("treat_all")) is not None]
            data += ax.plot([t for t, _ in pts], [v for _, v in pts], color=colors.get(name, "#555"),
                    lw=2.2 if name == first else 1.4, label=_t(name))
            values += [v for _, v in pts]
        if not values:
            return None
        if treat_all:
            data += ax.plot([t for t, _ in treat_all], [v for _, v in treat_all], color="#444", lw=1.1, ls=":",
                    label="treat all")
        ax.axhline(0, color="#888", lw=1.1, ls="--", label="treat none")
        top = max(values + [v for _, v in treat_all]) if values else 0.1
        ax.set_ylim(min(-0.01, -0.15 * top), top * 1.15 + 1e-3)
        op = report.get("operating_point") or {}
        if number(op.get("threshold")) is not None:
            ax.axvline(op["threshold"], color=FLAG, lw=1, alpha=0.7)
            ax.text(op["threshold"], ax.get_ylim()[0], " operating point", color=FLAG, fontsize=7.5, va="bottom")
        ax.set(xlabel="risk threshold", ylabel="net benefit", title="Decision curve, test split")
        ax.legend(loc="upper right")
        _series(data)
        return _svg(fig, "decision-curve", "Decision curve: net benefit of each score, treat all and treat none")


def forest_svg(report: dict) -> str | None:
    """Each subgroup's gap from the overall figure with its 95% CI, one panel per measure with a tolerance (shaded
    band); flagged gaps in red."""
    fair = report.get("fairness") or {}
    attrs = fair.get("attributes") or {}
    tol = fair.get("tolerances") or {}
    flagged_metrics = [f.get("metric") for f in fair.get("flags") or []]
    metrics = list(dict.fromkeys([*tol, *(m for m in flagged_metrics if m)])) or ["auroc"]
    rows = [(attr, g) for attr, block in attrs.items() for g in block.get("groups") or []]
    if not rows:
        return None
    flagged = {(f.get("attribute"), f.get("group"), f.get("metric")) for f in fair.get("flags") or []}
    n = len(rows)
    with matplotlib.rc_context(_RC):
        fig = _figure(min(3.0 * len(metrics) + 2.2, 11.5), 0.9 + 0.26 * (n + len(attrs)))
        axes = fig.subplots(1, len(metrics), sharey=True, squeeze=False)[0]
        ypos, labels, y, data = [], [], 0.0, []
        for i, (attr, g) in enumerate(rows):
            if i == 0 or rows[i - 1][0] != attr:
                y += 0.6
            ypos.append(-y)
            labels.append(_t(f"{attr}: {g.get('label') or g.get('group')} (n={g.get('n')})"))
            y += 1
        for ax, name in zip(axes, metrics, strict=True):
            scale = 100.0 if name in ("tpr", "fpr", "ppv", "flag_rate") else 1.0
            t = number(tol.get(name))
            if t is not None:
                ax.axvspan(-t * scale, t * scale, color="#2a9d8f", alpha=0.12, lw=0)
            ax.axvline(0, color="#777", lw=1)
            for (attr, g), yy in zip(rows, ypos, strict=True):
                e = (g.get("gaps") or {}).get(name)
                point, ci = estimate(e), interval(e)
                if point is None:
                    continue
                bad = (attr, g.get("group"), name) in flagged or name in (g.get("flags") or [])
                color = FLAG if bad else PRIMARY
                if ci is not None:
                    data += ax.plot([ci[0] * scale, ci[1] * scale], [yy, yy], color=color, lw=2.4 if bad else 1.5)
                data += ax.plot([point * scale], [yy], "s" if bad else "o", color=color, ms=6 if bad else 4.5)
            unit = " (pp)" if scale == 100.0 else " (log ratio)" if name == "observed_expected" else ""
            title = f"{metric_name(name)} gap{unit}"
            if t is not None:
                title += f"\ntolerance ±{t:g}"
            ax.set_title(_t(title), fontsize=8.5)
            ax.grid(axis="y", visible=False)
            lim = max([abs(x) for x in ax.get_xlim()] + [(t or 0) * scale * 1.3])
            ax.set_xlim(-lim, lim)
        axes[0].set_yticks(ypos, labels)
        axes[0].set_ylim(min(ypos) - 0.8, 0.2)
        _series(data)
        fig.suptitle("Subgroup gaps from the overall figure, 95% CI (red: flagged)", fontsize=9.5)
        return _svg(fig, "forest", "Forest plot of subgroup gaps with 95% intervals and tolerance bands")


def importance_svg(report: dict, top: int = 20) -> str | None:
    """Global importance: mean absolute contribution of the `top` most important features."""
    rows = [r for r in report.get("importance") or [] if number(r.get("mean_abs_contribution")) is not None]
    rows = sorted(rows, key=lambda r: -r["mean_abs_contribution"])[:top]
    if not rows:
        return None
    with matplotlib.rc_context(_RC):
        fig = _figure(6.4, 0.7 + 0.24 * len(rows))
        ax = fig.subplots()
        labels = [_t(_short(r.get("label") or r.get("column"))) for r in rows][::-1]
        vals = [r["mean_abs_contribution"] for r in rows][::-1]
        _series(list(ax.barh(range(len(rows)), vals, color=PRIMARY, height=0.7)))
        ax.set_yticks(range(len(rows)), labels)
        ax.grid(axis="y", visible=False)
        ax.set(xlabel="mean absolute contribution", title="Global importance, test split")
        if not math.isfinite(max(vals)) or max(vals) <= 0:
            ax.set_xlim(0, 1)
        return _svg(fig, "importance", "Bar chart of global feature importance")


def _short(text: object, width: int = 48) -> str:
    s = str(text)
    return s if len(s) <= width else s[: width - 1] + "…"


_DRAWN: dict[str, dict[str, str | None]] = {}  # the last few reports' figures, by content digest


def figures(report: dict) -> dict[str, str | None]:
    """Every figure of the page by its data-plot name; drawn once per report content (drawing is the slow part of
    rendering, and a report is often rendered more than once, e.g. as a draft and with its final facts)."""
    key = hashlib.sha256(json.dumps(report, sort_keys=True, default=str).encode()).hexdigest()
    if key not in _DRAWN:
        drawn = {"roc": roc_svg(report), "calibration": calibration_svg(report),
                 "decision-curve": decision_curve_svg(report), "forest": forest_svg(report),
                 "importance": importance_svg(report)}
        while len(_DRAWN) >= 8:
            _DRAWN.pop(next(iter(_DRAWN)))
        _DRAWN[key] = drawn
    return dict(_DRAWN[key])
