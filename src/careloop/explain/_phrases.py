"""One short clinical phrase for a column and its value: "3 admissions in the past 6 months", "sodium 128 mmol/L at
discharge", "lowest hemoglobin 8.9 g/dL during the stay", "discharged to a skilled nursing facility".

`phrase` never raises: a value it cannot read shows in the generic form "<label>: <value>".
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from functools import partial

from careloop.explain._columns import ColumnInfo
from careloop.explain._vocab import display, phrase_for_code

__all__ = ["format_number", "is_missing", "phrase", "specific_phrase", "unit_text", "window_phrase"]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(m|h|d|w)\s*$")
_DAYS_PER_MONTH = 365.25 / 12


# --- values -------------------------------------------------------------------------------------------------------


def is_missing(value: object) -> bool:
    """None, NaN, NaT, pandas NA or an empty string."""
    if value is None:
        return True
    if isinstance(value, str):
        return value.strip().lower() in ("", "nan", "none", "<na>", "nat", "null")
    try:
        return bool(value != value)  # NaN and NaT are not equal to themselves
    except TypeError:
        return True  # pandas NA: its truth value is ambiguous
    except Exception:
        return False


def _num(value: object) -> float | None:
    """A finite float, or None."""
    try:
        x = float(value.strip()) if isinstance(value, str) else float(value)  # type: ignore[arg-type]
    except Exception:
        return None
    return x if math.isfinite(x) else None


def _truth(value: object) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        return {"true": True, "t": True, "yes": True, "y": True, "1": True,
                "false": False, "f": False, "no": False, "n": False, "0": False}.get(value.strip().lower())
    x = _num(value)
    return None if x is None else x != 0


def format_number(x: float, decimals: int | None = None) -> str:
    """A number for reading: fixed `decimals` when known, else about three significant digits without trailing zeros.

    >>> format_number(7.425671), format_number(128.0), format_number(1.914), format_number(4.0, 1)
    ('7.43', '128', '1.91', '4.0')
    """
    if decimals is None:
        a = abs(x)
        if a == 0 or float(x).is_integer() or a >= 100:
            decimals = 0
        elif a >= 10:
            decimals = 1
        elif a >= 0.1:
            decimals = 2
        else:
            decimals = min(6, 1 - math.floor(math.log10(a)))
        strip = True
    else:
        decimals = max(0, int(decimals))
        strip = False
    text = f"{x:,.{decimals}f}" if abs(x) >= 10000 else f"{x:.{decimals}f}"
    if strip and "." in text:
        text = text.rstrip("0").rstrip(".")
    if text.startswith("-") and float(text.replace(",", "")) == 0:
        text = text[1:]
    return text


def _count(x: float) -> str:
    return format_number(x) if not float(x).is_integer() else str(int(x))


def _singular(label: str) -> str:
    head, _, last = label.rpartition(" ")
    low = last.lower()
    if low.endswith("ses") and len(low) > 4 and low[-4] in "aeiou":  # diagnoses -> diagnosis
        last = last[:-2] + "is"
    elif low.endswith("ies") and len(low) > 3:
        last = last[:-3] + "y"
    elif low.endswith(("sses", "ches", "shes", "xes")):
        last = last[:-2]
    elif low.endswith("s") and not low.endswith("ss"):
        last = last[:-1]
    return f"{head} {last}" if head else last


def _plural(label: str) -> str:
    head, _, last = label.rpartition(" ")
    low = last.lower()
    if low.endswith("s"):
        return label
    if low.endswith("y") and len(low) > 1 and low[-2] not in "aeiou":
        last = last[:-1] + "ies"
    elif low.endswith(("ch", "sh", "x")):
        last += "es"
    else:
        last += "s"
    return f"{head} {last}" if head else last


def _noun(n: float, label: str) -> str:
    return _singular(label) if n == 1 else _plural(label)


# --- units and windows --------------------------------------------------------------------------------------------

_UNITS = {
    "mm[Hg]": "mmHg", "Cel": "°C", "[degF]": "°F", "10*3/uL": "×10³/µL", "10*9/L": "×10⁹/L", "10*6/uL": "×10⁶/µL",
    "10*12/L": "×10¹²/L", "[lb_av]": "lb", "[in_i]": "in", "kg/m2": "kg/m²", "mL/min/{1.73_m2}": "mL/min/1.73 m²",
    "1": "", "{score}": "", "{ratio}": "", "{INR}": "", "/[HPF]": "/HPF", "[pH]": "",
}


def unit_text(ucum: str | None) -> str:
    """A UCUM unit as clinicians write it: "mm[Hg]" -> "mmHg", "Cel" -> "°C", "umol/L" -> "µmol/L".

    >>> unit_text("mm[Hg]"), unit_text("10*3/uL"), unit_text("umol/L")
    ('mmHg', '×10³/µL', 'µmol/L')
    """
    if not ucum:
        return ""
    u = str(ucum).strip()
    if u in _UNITS:
        return _UNITS[u]
    u = re.sub(r"\{[^}]*\}", "", u)  # annotations: {cells}/uL -> /uL
    u = re.sub(r"\[([^\]]*)\]", r"\1", u)  # [IU]/L -> IU/L
    u = re.sub(r"(?<![A-Za-z])u(?=(g|mol|L|IU|U|eq|m|s)\b)", "µ", u)
    return u.strip()


def _with_unit(number: str, ucum: str | None) -> str:
    u = unit_text(ucum)
    if not u:
        return number
    return f"{number}{u}" if u[0] in "%°/" else f"{number} {u}"


def window_phrase(window: str | None) -> str:
    """How a window reads after a count: "180d" -> "in the past 6 months", "stay" -> "during the stay", "all" -> "".

    >>> window_phrase("180d"), window_phrase("365d"), window_phrase("14d"), window_phrase("30d")
    ('in the past 6 months', 'in the past year', 'in the past 2 weeks', 'in the past 30 days')
    """
    if window is None or str(window).strip().lower() in ("", "all", "ever", "none"):
        return ""
    w = str(window).strip()
    if w.lower() == "stay":
        return "during the stay"
    m = _DURATION.match(w)
    if not m:
        return f"in the past {w}"
    n, unit = float(m.group(1)), m.group(2)
    if unit == "m":
        if n % 60:
            return "in the past minute" if n == 1 else f"in the past {_count(n)} minutes"
        n, unit = n / 60, "h"
    if unit == "h":
        if n % 24 or n < 48:  # "in the past 24 hours", as clinicians say it
            return "in the past hour" if n == 1 else f"in the past {_count(n)} hours"
        n, unit = n / 24, "d"
    days = n * 7 if unit == "w" else n
    if days == 1:
        return "in the past day"
    if days >= 365 and days % 365 == 0:
        years = days / 365
        return "in the past year" if years == 1 else f"in the past {_count(years)} years"
    months = round(days / _DAYS_PER_MONTH)
    if days >= 60 and abs(days - months * _DAYS_PER_MONTH) <= 0.025 * days + 1:
        return "in the past year" if months == 12 else f"in the past {months} months"
    if days % 7 == 0 and days <= 56:
        weeks = days / 7
        return "in the past week" if weeks == 1 else f"in the past {_count(weeks)} weeks"
    return f"in the past {_count(days)} days"


def _join(*parts: str) -> str:
    return " ".join(p for p in parts if p)


# --- kinds --------------------------------------------------------------------------------------------------------


def _age(info: ColumnInfo, v: object, missing: bool) -> str | None:
    if missing:
        return "age not recorded"
    x = _num(v)
    if x is None or x < 0:
        return None
    return "age under 1 year" if x < 1 else f"age {math.floor(x)}"


def _coded(info: ColumnInfo, v: object, missing: bool) -> str | None:
    if missing:
        return f"{info.label} not recorded"
    if isinstance(v, bool) and info.kind == "column":
        return info.label if v else f"no {info.label}"
    vocab = info.vocabulary
    found = phrase_for_code(vocab, v)
    if found:
        return found
    return f"{info.label}: {display(vocab or info.column, v)}"


def _length_of_stay(info: ColumnInfo, v: object, missing: bool) -> str | None:
    if missing:
        return "length of stay not recorded"
    x = _num(v)
    if x is None or x < 0:
        return None
    return "stay of less than a day" if x < 1 else f"{math.floor(x + 0.5)}-day stay"


def _emergent(info: ColumnInfo, v: object, missing: bool) -> str | None:
    if missing:
        return "admission priority not recorded"
    t = _truth(v)
    if t is None:
        return None
    return "emergency admission" if t else "elective admission"


def _counted(info: ColumnInfo, v: object, missing: bool) -> str | None:
    when = window_phrase(info.window)
    if missing:
        return _join(_plural(info.label), when, "not recorded")
    x = _num(v)
    if x is None or x < 0:
        return None
    if x == 0:
        return _join(f"no {_plural(info.label)}", when)
    noun = _noun(x, info.label)
    if info.kind == "distinct_codes" and x > 1:
        noun = f"different {noun}"
    return _join(_count(x), noun, when)


def _days_since_discharge(info: ColumnInfo, v: object, missing: bool) -> str | None:
    if missing:
        return "no previous discharge"
    x = _num(v)
    if x is None or x < 0:
        return None
    if x < 1:
        span = "less than a day"
    elif x >= 730:
        span = f"{math.floor(x / 365.25)} years"
    else:
        d = math.floor(x + 0.5)
        span = "1 day" if d == 1 else f"{d} days"
    return f"previous discharge {span} before this admission"


def _valued(info: ColumnInfo, v: object, missing: bool) -> str | None:
    """A comorbidity index or a published score: "Charlson comorbidity index 6", "LACE index 11"."""
    if missing:
        return f"{info.label} not recorded"
    x = _num(v)
    return None if x is None else f"{info.label} {format_number(x)}"


_UNIT_DECIMALS = {"cel": 1, "[degf]": 1, "kg": 1, "[lb_av]": 1}


def _decimals(info: ColumnInfo) -> int | None:
    """The reporting precision of a known observation in its canonical unit, else of the unit, else None (auto)."""
    unit = (info.unit or "").replace(" ", "").lower()
    m = info.measure
    if m is not None and (not unit or m.unit is None or unit == m.unit.replace(" ", "").lower()):
        return m.decimals
    return _UNIT_DECIMALS.get(unit)


def _hours(x: float) -> str:
    if x < 1:
        return "less than an hour"
    if x < 48:
        h = math.floor(x + 0.5)
        return "1 hour" if h == 1 else f"{h} hours"
    return f"{math.floor(x / 24 + 0.5)} days"


_HOUSEHOLD = "63512-8"


def _measurement(info: ColumnInfo, v: object, missing: bool, *, ended: bool = True) -> str | None:
    """A measurement's phrase; a last value over the stay is "at discharge" only once the stay has `ended` (while the
    patient is still in hospital it is the latest value so far)."""
    label, agg = info.label, info.aggregation or "last"
    when = window_phrase(info.window)
    stay = when == "during the stay"
    household = info.measure is not None and (info.code or "").endswith(_HOUSEHOLD)
    if missing:
        if household:
            return "household size not recorded"
        return f"no {label} measured {when}" if when else f"{label} not recorded"
    x = _num(v)
    if x is None:
        return None
    if agg == "count":
        if x == 0:
            return _join(f"no {label} measured", when)
        return _join(f"{_count(x)} {label} {'measurement' if x == 1 else 'measurements'}", when)
    if agg == "hours_since":  # both engines count from the window's first measurement, not its last
        return _join(f"{label} first measured {_hours(x)} ago", when) if x >= 0 else None
    dec = _decimals(info)
    if agg == "trend":
        mag = format_number(abs(x), dec)
        if float(mag.replace(",", "")) == 0:
            return _join(f"{label} unchanged", when)
        return _join(f"{label} {'rose' if x > 0 else 'fell'} by {_with_unit(mag, info.unit)}", when)
    if household and agg in ("last", "first"):
        return "lives alone" if x == 1 else f"{_count(x)} people in the household"
    value = _with_unit(format_number(x, dec), info.unit)
    if agg == "last":
        if stay:  # the stay's last value: its discharge value once it has ended, else the latest so far
            return f"{label} {value} at discharge" if ended else f"latest {label} {value}"
        return _join(f"latest {label} {value}", when)
    if agg == "first":
        return f"{label} {value} at admission" if stay else _join(f"earliest {label} {value}", when)
    word = {"min": "lowest", "max": "highest", "mean": "average"}.get(agg)
    return _join(f"{word} {label} {value}", when) if word else None


def _column(info: ColumnInfo, v: object, missing: bool) -> str | None:
    if missing:
        return f"{info.label} not recorded"
    if isinstance(v, bool):
        return info.label if v else f"no {info.label}"
    if info.aggregation == "categorical" or isinstance(v, str) or info.vocabulary:
        return _coded(info, v, missing)
    x = _num(v)
    return None if x is None else f"{info.label} {format_number(x)}"


_KINDS: dict[str, Callable[[ColumnInfo, object, bool], str | None]] = {
    "age": _age, "static": _coded, "latest_code": _coded, "latest_text": _coded, "admit_source": _coded,
    "principal_diagnosis": _coded,
    "length_of_stay": _length_of_stay, "emergent": _emergent, "encounter_count": _counted,
    "distinct_codes": _counted, "event_count": _counted, "days_since_discharge": _days_since_discharge,
    "comorbidity": _valued, "score": _valued, "measurement": _measurement, "column": _column,
}


def _scalar(value: object) -> object:
    if hasattr(value, "item") and not isinstance(value, str | bytes):
        try:
            return value.item()  # type: ignore[union-attr]
        except Exception:
            return value
    return value


def _handler(kind: str, ended: bool) -> Callable[[ColumnInfo, object, bool], str | None] | None:
    """The kind's phrase maker; only a measurement's wording depends on whether the stay has ended."""
    return partial(_measurement, ended=ended) if kind == "measurement" else _KINDS.get(kind)


def specific_phrase(info: ColumnInfo, value: object, *, ended: bool = True) -> str | None:
    """The phrase for the column's kind, or None where the kind or value is not understood (then `phrase` uses the
    generic form). `ended` as in `phrase`."""
    try:
        handler = _handler(info.kind, ended)
        if handler is None:
            return None
        value = _scalar(value)
        return handler(info, value, is_missing(value))
    except Exception:
        return None


def _generic(info: ColumnInfo, value: object) -> str:
    label = getattr(info, "label", None) or getattr(info, "column", "value")
    try:
        value = _scalar(value)
        if is_missing(value):
            return f"{label} not recorded"
        x = _num(value) if not isinstance(value, bool) else None
        text = format_number(x) if x is not None else str(value)
        return f"{label}: {text[:80]}"
    except Exception:
        return str(label)


def phrase(info: ColumnInfo, value: object, *, ended: bool = True) -> str:
    """One short clinical phrase for a column and its value; never raises.

    `ended` says whether the stay has ended at the index time (a discharge): a last value over the stay then reads
    "sodium 128 mmol/L at discharge"; while the patient is still in hospital (a chart opened, the risk over the stay)
    it reads "latest sodium 128 mmol/L", since no discharge has happened yet.

    >>> from careloop.explain import ColumnInfo
    >>> phrase(ColumnInfo("admissions_180d", "admissions_180d", "encounter_count", "180d", label="admissions"), 3.0)
    '3 admissions in the past 6 months'
    """
    return specific_phrase(info, value, ended=ended) or _generic(info, value)
