"""The dashboard's charts as inline SVG, drawn with matplotlib's object API (`Figure`, no pyplot, no global state).

Text stays text (`svg.fonttype` none) and element ids are prefixed per chart, so several charts share one page.
Every data series carries a gid (`<chart>-series-<i>`) and every alert marker `<chart>-alert-<i>`, for tests and
for readers of the page source.
"""

from __future__ import annotations

import functools
import io
import math
import re
import threading
from collections.abc import Callable, Sequence

import matplotlib
from matplotlib.figure import Figure

PRIMARY = "#1f4e9c"
ALERT = "#c0392b"
BAND = "#f4d03f"
KIND_COLORS = {"input_drift": "#c0392b", "output_drift": "#e67e22", "performance": "#8e44ad", "calibration": "#2980b9",
               "fairness": "#16a085", "burden": "#7f8c8d"}
PALETTE = ("#1f4e9c", "#d9822b", "#2a9d8f", "#8e5ea2", "#7a7a7a", "#b5483d", "#5b8e23", "#c06c84")
_RC = {"svg.fonttype": "none", "font.family": "sans-serif", "font.size": 9, "axes.spines.top": False,
       "axes.spines.right": False, "axes.grid": True, "grid.color": "#e6e6e6", "grid.linewidth": 0.6,
       "legend.frameon": False, "legend.fontsize": 8}
_REF = re.compile(r'(\sid="|href="#|url\(#)([^")]+)')
_NAME = re.compile(r"[^A-Za-z0-9_-]+")
_LOCK = threading.RLock()  # matplotlib's rc_context changes global state: one chart at a time per process


def _locked(fn: Callable[..., str]) -> Callable[..., str]:
    @functools.wraps(fn)
    def wrapper(*args, **kw) -> str:
        with _LOCK:
            return fn(*args, **kw)

    return wrapper


def _t(text: object) -> str:
    """Text for matplotlib, with mathtext's dollar signs taken literally."""
    return str(text).replace("$", r"\$")


def _attr(text: str) -> str:
    return text.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;").replace(">", "&gt;")


def _figure(width: float, height: float, *, layout: str | None = "constrained") -> Figure:
    with matplotlib.rc_context(_RC):
        return Figure(figsize=(width, height), layout=layout)


@_locked
def svg(fig: Figure, name: str, title: str) -> str:
    """The figure as one `<svg>` element with ids unique to `name` and an accessible title."""
    name = _NAME.sub("-", name).strip("-") or "chart"
    buf = io.StringIO()
    with matplotlib.rc_context({**_RC, "svg.hashsalt": f"careloop-{name}"}):
        fig.savefig(buf, format="svg", metadata={"Date": None, "Title": title})
    text = buf.getvalue()
    out = text[text.index("<svg"):]
    out = _REF.sub(lambda m: f"{m.group(1)}{name}-{m.group(2)}", out)
    return out.replace("<svg ", f'<svg role="img" aria-label="{_attr(title)}" class="chart" ', 1)


@_locked
def risk_over_stay_svg(days: Sequence[float], risks: Sequence[float | None], threshold: float,
                       band: tuple[float, float] | None, *, discharged: bool, name: str = "risk") -> str:
    """Risk (%) against days since admission, with the alert threshold, its uncertainty band and the last point
    (discharge, or now) marked."""
    with matplotlib.rc_context(_RC):
        fig = _figure(7.0, 2.8)
        ax = fig.add_subplot()
        pts = [(d, 100 * r) for d, r in zip(days, risks, strict=True) if r is not None]
        top = max([threshold * 100, *(y for _, y in pts), (band[1] * 100 if band else 0)]) * 1.15 + 1
        if band:
            ax.axhspan(100 * band[0], 100 * band[1], color=BAND, alpha=0.25, lw=0, label="near-threshold band")
        ax.axhline(100 * threshold, color=ALERT, ls="--", lw=1, label=f"alert threshold {100 * threshold:.1f}%")
        if pts:
            xs, ys = zip(*pts, strict=True)
            (line,) = ax.plot(xs, ys, color=PRIMARY, marker="o", ms=4, lw=1.6, label="risk")
            line.set_gid("series-1")
            last = ax.plot([xs[-1]], [ys[-1]], ls="none", marker="D", ms=7, color=PRIMARY, mfc="white", mew=1.6,
                           label="at discharge" if discharged else "now")[0]
            last.set_gid("series-2")
            above = [(x, y) for x, y in pts if y >= 100 * threshold]
            if above:
                ax.plot(*zip(*above, strict=True), ls="none", marker="o", ms=7, mfc="none", mec=ALERT, mew=1.4,
                        label="above threshold")[0].set_gid("alert-1")
        ax.set_xlim(0, max([1.0, *days]) * 1.03)
        ax.set_ylim(0, min(100, top))
        ax.set_xlabel("days since admission")
        ax.set_ylabel("30-day readmission risk (%)")
        ax.legend(loc="upper left", ncols=2)
        return svg(fig, name, "Risk over the stay with the alert threshold")


@_locked
def alerts_svg(labels: Sequence[str], counts: dict[str, list[int]], *, name: str = "alerts") -> str:
    """Alerts per period, stacked by kind."""
    with matplotlib.rc_context(_RC):
        fig = _figure(7.4, 2.4)
        ax = fig.add_subplot()
        x = list(range(len(labels)))
        bottom = [0] * len(labels)
        for i, (kind, ys) in enumerate(sorted(counts.items())):
            color = KIND_COLORS.get(kind, PALETTE[(i + 3) % len(PALETTE)])
            bars = ax.bar(x, ys, bottom=bottom, color=color, label=_t(kind), width=0.7)
            for j, patch in enumerate(bars):
                patch.set_gid(f"series-{i + 1}-{j + 1}")
            bottom = [b + y for b, y in zip(bottom, ys, strict=True)]
        _ticks(ax, labels, len(labels) > 8)
        ax.set_ylabel("alerts")
        ax.set_ylim(0, max([1, *bottom]) * 1.2)
        ax.yaxis.get_major_locator().set_params(integer=True)
        if counts:
            ax.legend(loc="upper left", ncols=min(4, len(counts)))
        return svg(fig, name, "Alerts raised per period, by kind")


@_locked
def series_svg(title: str, labels: Sequence[str], series: Sequence[dict], *, alert_periods: Sequence[int] = (),
               name: str, percent: bool = False, hline: float | None = None) -> str:
    """Lines over periods. Each series: {"name", "values", "lo", "hi", "alerts": [period index...]}; CIs as
    shaded bands; alerted points ringed in red; periods with a related alert shaded."""
    with matplotlib.rc_context(_RC):
        fig = _figure(7.4, 2.6, layout=None)  # fixed margins: several charts a page, drawn fast
        rotate = len(labels) > 8
        fig.subplots_adjust(left=0.08, right=0.76 if len(series) > 1 or hline is not None else 0.97, top=0.88,
                            bottom=0.27 if rotate else 0.12)
        ax = fig.add_subplot()
        x = list(range(len(labels)))
        k = 100.0 if percent else 1.0
        for p in sorted(set(alert_periods)):
            ax.axvspan(p - 0.45, p + 0.45, color=ALERT, alpha=0.08, lw=0)
        n_alert = 0
        for i, s in enumerate(series):
            color = PALETTE[i % len(PALETTE)]
            ys = [_num(v, k) for v in s["values"]]
            (line,) = ax.plot(x, ys, color=color, marker="o", ms=3.5, lw=1.5, label=_t(s["name"]))
            line.set_gid(f"series-{i + 1}")
            lo, hi = s.get("lo"), s.get("hi")
            if lo and hi and any(v is not None for v in lo):
                ax.fill_between(x, [_num(v, k) for v in lo], [_num(v, k) for v in hi], color=color, alpha=0.15, lw=0)
            for p in s.get("alerts") or ():
                if 0 <= p < len(ys) and not math.isnan(ys[p]):
                    n_alert += 1
                    ax.plot([p], [ys[p]], ls="none", marker="o", ms=9, mfc="none", mec=ALERT,
                            mew=1.6)[0].set_gid(f"alert-{n_alert}")
        if hline is not None:
            ax.axhline(hline * k, color=ALERT, ls="--", lw=1, label="alert threshold")
        _ticks(ax, labels, rotate)
        ax.set_title(_t(title) + (" (%)" if percent else ""), loc="left", fontsize=10)
        if len(series) > 1 or hline is not None:
            ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7)
        return svg(fig, name, title)


@_locked
def heatmap_svg(title: str, labels: Sequence[str], series: Sequence[dict], *, name: str, percent: bool = False,
                threshold: float | None = None) -> str:
    """One row per series (a feature, a group), one column per period, the value as colour; alerted cells boxed in
    red. Readable where dozens of lines would not be."""
    import numpy as np
    from matplotlib.patches import Rectangle

    with matplotlib.rc_context({**_RC, "axes.grid": False}):
        rows = len(series)
        fig = _figure(7.4, 1.1 + 0.22 * rows, layout=None)
        rotate = len(labels) > 8
        fig.subplots_adjust(left=0.24, right=0.93, top=1 - 0.42 / (1.1 + 0.22 * rows),
                            bottom=(0.75 if rotate else 0.45) / (1.1 + 0.22 * rows))
        ax = fig.add_subplot()
        k = 100.0 if percent else 1.0
        m = np.array([[_num(v, k) for v in s["values"]] for s in series], dtype=float)
        finite = m[np.isfinite(m)]
        top = float(finite.max()) if finite.size else 1.0
        if percent:
            top = 100.0  # shares on their whole scale: 6% missing looks like 6%, not like the maximum
        elif threshold is not None:
            top = max(top, threshold * k * 1.2)
        img = ax.imshow(np.ma.masked_invalid(m), aspect="auto", cmap="YlOrRd", vmin=0, vmax=top or 1.0,
                        interpolation="nearest")
        img.set_gid("series-1")
        ax.set_yticks(range(rows), [_t(s["name"]) for s in series], fontsize=7)
        _ticks(ax, labels, rotate)
        n_alert = 0
        for r, s in enumerate(series):
            for p in s.get("alerts") or ():
                n_alert += 1
                ax.add_patch(Rectangle((p - 0.5, r - 0.5), 1, 1, fill=False, ec=PRIMARY, lw=1.8)).set_gid(
                    f"alert-{n_alert}")
        bar = fig.colorbar(img, ax=ax, fraction=0.03, pad=0.01)
        if threshold is not None:
            bar.ax.axhline(threshold * k, color=PRIMARY, lw=1.5)
        bar.ax.tick_params(labelsize=7)
        ax.set_title(_t(title) + (" (%)" if percent else "") + (" · line on the scale: alert threshold"
                                                               if threshold is not None else ""), loc="left",
                     fontsize=10)
        return svg(fig, name, title)


@_locked
def feedback_svg(days: Sequence[str], shown: Sequence[int], accepted: Sequence[int], overridden: Sequence[int], *,
                 name: str = "feedback") -> str:
    """Cards shown per day, beside the feedback received on them (accepted, overridden)."""
    with matplotlib.rc_context(_RC):
        fig = _figure(7.4, 2.4)
        ax = fig.add_subplot()
        x = list(range(len(days)))
        w = 0.4
        for j, (vals, off, color, label) in enumerate(((shown, -w / 2, PRIMARY, "cards shown"),
                                                        (accepted, w / 2, "#1e8449", "accepted"))):
            bars = ax.bar([i + off for i in x], vals, width=w, color=color, label=label)
            for i, patch in enumerate(bars):
                patch.set_gid(f"series-{j + 1}-{i + 1}")
        bars = ax.bar([i + w / 2 for i in x], overridden, bottom=accepted, width=w, color="#b9770e", label="overridden")
        for i, patch in enumerate(bars):
            patch.set_gid(f"series-3-{i + 1}")
        rotate = len(days) > 8
        ax.set_xticks(x, [_t(d) for d in days], rotation=45 if rotate else 0, ha="right" if rotate else "center")
        ax.set_xlim(-0.7, max(len(days), 7) - 0.3)  # a day's bars keep their width when there are few days
        top = max([1, *shown, *(a + o for a, o in zip(accepted, overridden, strict=True))])
        ax.set_ylim(0, top * 1.35)  # room for the legend
        ax.set_ylabel("cards")
        ax.yaxis.get_major_locator().set_params(integer=True)
        ax.legend(loc="upper left", ncols=3)
        return svg(fig, name, "Cards shown per day and the feedback on them")


def _ticks(ax, labels: Sequence[str], rotate: bool, most: int = 18) -> None:
    """Period labels on the x axis, every n-th when there are many (a 6-year monthly run has 72)."""
    step = max(1, math.ceil(len(labels) / most))
    at = list(range(0, len(labels), step))
    ax.set_xticks(at, [_t(labels[i]) for i in at], rotation=45 if rotate else 0, ha="right" if rotate else "center")
    ax.set_xlim(-0.6, len(labels) - 0.4)


def _num(v: object, k: float) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        return math.nan
    return float(v) * k


__all__ = ["alerts_svg", "feedback_svg", "heatmap_svg", "risk_over_stay_svg", "series_svg", "svg"]
