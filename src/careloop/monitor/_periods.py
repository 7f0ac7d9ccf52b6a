"""Calendar periods in UTC: [start, end), weeks from Monday, months, quarters, years."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from careloop.errors import ConfigError
from careloop.monitor._config import PERIODS


@dataclass(frozen=True)
class Period:
    start: dt.datetime
    end: dt.datetime
    complete: bool = True
    whole: tuple[dt.datetime, dt.datetime] | None = None  # the calendar period, when --start/--end cut it short

    @property
    def partial(self) -> bool:
        return self.whole is not None

    @property
    def label(self) -> str:
        """The calendar period's name; a cut one says which days it covers (its figures are not the period's)."""
        if self.whole is None:
            return label_of(self.start, self.end)
        last = (self.end - dt.timedelta(microseconds=1)).date()
        return f"{label_of(*self.whole)} (from {self.start.date().isoformat()} to {last.isoformat()})"


def utc(value: dt.datetime | dt.date | str | None, name: str = "time") -> dt.datetime | None:
    """An aware UTC datetime from a date, a datetime (naive means UTC) or ISO text."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise ConfigError(f"{name}: {value!r} is not a date (use YYYY-MM-DD)") from None
    if isinstance(value, dt.datetime):
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC)
    raise ConfigError(f"{name}: {value!r} is not a date")


def check_period(period: str) -> str:
    if period not in PERIODS:
        raise ConfigError(f"--period: {period!r} is not one of {', '.join(PERIODS)}")
    return period


def floor(t: dt.datetime, period: str) -> dt.datetime:
    """The start of the period holding t."""
    d = t.astimezone(dt.UTC)
    if period == "week":
        day = dt.datetime(d.year, d.month, d.day, tzinfo=dt.UTC)
        return day - dt.timedelta(days=day.weekday())
    if period == "month":
        return dt.datetime(d.year, d.month, 1, tzinfo=dt.UTC)
    if period == "quarter":
        return dt.datetime(d.year, 3 * ((d.month - 1) // 3) + 1, 1, tzinfo=dt.UTC)
    return dt.datetime(d.year, 1, 1, tzinfo=dt.UTC)


def add_months(t: dt.datetime, months: int) -> dt.datetime:
    """t moved by whole months (the day clipped to the month's length)."""
    y, m = divmod(t.month - 1 + months, 12)
    year, month = t.year + y, m + 1
    last = (dt.date(year + (month == 12), month % 12 + 1, 1) - dt.timedelta(days=1)).day
    return t.replace(year=year, month=month, day=min(t.day, last))


def following(t: dt.datetime, period: str) -> dt.datetime:
    """The start of the period after the one starting at t."""
    if period == "week":
        return t + dt.timedelta(days=7)
    return add_months(t, {"month": 1, "quarter": 3, "year": 12}[period])


def ceil(t: dt.datetime, period: str) -> dt.datetime:
    """The first period boundary at or after t."""
    f = floor(t, period)
    return f if f == t else following(f, period)


def periods(start: dt.datetime, end: dt.datetime, period: str, data_end: dt.datetime | None = None) -> list[Period]:
    """The periods from the one holding `start` to the one holding the instant before `end`, each cut to
    [start, end) (a cut one keeps its calendar bounds in `whole`: asked for two weeks, a report must not show a
    quarter's stays); a period that runs past `data_end` is marked incomplete."""
    out = []
    s = floor(start, period)
    while s < end:
        e = following(s, period)
        lo, hi = max(s, start), min(e, end)
        limit = min(end, data_end) if data_end is not None else end
        out.append(Period(lo, hi, complete=hi <= limit, whole=None if (lo, hi) == (s, e) else (s, e)))
        s = e
    return out


def label_of(start: dt.datetime, end: dt.datetime) -> str:
    """A short name: 2023-01 (a month), 2023-Q1, 2023, or the week's first day."""
    days = (end - start).days
    if days == 7:
        return f"{start:%Y-%m-%d}"
    months = (end.year - start.year) * 12 + end.month - start.month
    if start.day == 1 and months == 1:
        return f"{start:%Y-%m}"
    if start.day == 1 and months == 3 and start.month in (1, 4, 7, 10):
        return f"{start.year}-Q{(start.month - 1) // 3 + 1}"
    if start.day == 1 and months == 12 and start.month == 1:
        return f"{start.year}"
    return f"{start:%Y-%m-%d}–{end:%Y-%m-%d}"
