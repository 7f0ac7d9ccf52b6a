"""Periods in UTC and the thresholds file: defaults, strict fields, errors that name the line."""

from __future__ import annotations

import datetime as dt
import itertools
from pathlib import Path

import pytest

from careloop.errors import CareloopError
from careloop.monitor import MonitorConfig, MonitorConfigError, load_config, rules
from careloop.monitor._periods import add_months, ceil, floor, label_of, periods, utc

UTC = dt.UTC


def test_period_boundaries() -> None:
    t = dt.datetime(2023, 5, 17, 13, 5, tzinfo=UTC)
    assert floor(t, "month") == dt.datetime(2023, 5, 1, tzinfo=UTC)
    assert floor(t, "quarter") == dt.datetime(2023, 4, 1, tzinfo=UTC)
    assert floor(t, "year") == dt.datetime(2023, 1, 1, tzinfo=UTC)
    assert floor(t, "week") == dt.datetime(2023, 5, 15, tzinfo=UTC)  # a Monday
    assert ceil(dt.datetime(2023, 1, 1, tzinfo=UTC), "month") == dt.datetime(2023, 1, 1, tzinfo=UTC)
    assert ceil(dt.datetime(2022, 12, 31, 16, tzinfo=UTC), "quarter") == dt.datetime(2023, 1, 1, tzinfo=UTC)
    assert add_months(dt.datetime(2024, 1, 31, tzinfo=UTC), 1) == dt.datetime(2024, 2, 29, tzinfo=UTC)
    assert add_months(dt.datetime(2024, 3, 15, tzinfo=UTC), -12) == dt.datetime(2023, 3, 15, tzinfo=UTC)


def test_periods_cover_the_range_and_mark_the_unfinished_one() -> None:
    ps = periods(utc("2023-01-01"), utc("2024-01-01"), "month", data_end=utc("2023-12-20"))
    assert len(ps) == 12 and ps[0].label == "2023-01" and ps[-1].label == "2023-12"
    assert all(p.complete for p in ps[:-1]) and not ps[-1].complete
    assert all(a.end == b.start for a, b in itertools.pairwise(ps))
    q = periods(utc("2023-02-10"), utc("2023-07-01"), "quarter")
    assert [p.label for p in q] == ["2023-Q1 (from 2023-02-10 to 2023-03-31)", "2023-Q2"]  # --start cuts Q1
    assert label_of(utc("2023-01-01"), utc("2024-01-01")) == "2023"
    assert utc("2023-01-01T05:00:00+02:00") == dt.datetime(2023, 1, 1, 3, tzinfo=UTC)
    with pytest.raises(CareloopError, match="not a date"):
        utc("first of May", "--start")


def test_defaults_are_the_documented_rules() -> None:
    cfg = load_config(None)
    assert cfg.alpha == 0.05 and cfg.psi.watch == 0.10 and cfg.psi.act == 0.25
    assert cfg.calibration_intercept == 0.3 and cfg.min_rows == 100 and cfg.reference_months == 12
    text = " ".join(rules(cfg))
    for phrase in ("Bonferroni", "PSI", ">= 0.1 (watch)", ">= 0.25 (act)", "AUROC", "intercept", "Fairness",
                   "override rate", "repeat-alert share"):
        assert phrase in text, phrase


def test_a_yaml_file_overrides_some_fields(tmp_path: Path) -> None:
    f = tmp_path / "monitor.yaml"
    f.write_text("alpha: 0.01\npsi:\n  watch: 0.2\n  act: 0.4\nburden:\n  max_override_rate: 0.7\n")
    cfg = load_config(f)
    assert cfg.alpha == 0.01 and cfg.psi.act == 0.4 and cfg.burden.max_override_rate == 0.7 and cfg.bins == 10
    (tmp_path / "empty.yaml").write_text("")
    assert load_config(tmp_path / "empty.yaml") == MonitorConfig()
    assert load_config({"min_rows": 50}).min_rows == 50


def test_bad_configs_name_the_line(tmp_path: Path) -> None:
    f = tmp_path / "monitor.yaml"
    f.write_text("alpha: 0.05\npsi:\n  watch: 0.3\n  act: 0.2\n")
    with pytest.raises(MonitorConfigError, match=r"monitor.yaml:2: psi: .*must not be below"):
        load_config(f)
    f.write_text("alpha: 0.05\nmin_row: 10\n")
    with pytest.raises(MonitorConfigError, match=r"monitor.yaml:2: min_row: unknown field"):
        load_config(f)
    f.write_text("alpha: 2\n")
    with pytest.raises(MonitorConfigError, match=r"monitor.yaml:1: alpha"):
        load_config(f)
    with pytest.raises(MonitorConfigError, match="cannot read"):
        load_config(tmp_path / "absent.yaml")
    with pytest.raises(MonitorConfigError, match="config: min_rows"):
        load_config({"min_rows": 1})


def test_a_misspelt_fairness_metric_is_refused_with_its_line(tmp_path: Path) -> None:
    """A tolerance for an unknown metric would make every period's fairness check fail: fairness monitoring off."""
    from careloop.evaluation._fairness import FAIRNESS_METRICS

    f = tmp_path / "monitor.yaml"
    f.write_text("min_events: 10\nfairness:\n  min_group_size: 20\n  tolerances: {tprr: 0.1}\n")
    with pytest.raises(MonitorConfigError, match=r"monitor.yaml:4: fairness.tolerances: unknown metric 'tprr'; "
                                                 r"known: auroc, .*tpr"):
        load_config(f)
    with pytest.raises(MonitorConfigError, match=r"config: fairness\.tolerances: unknown metric 'AUROC'"):
        load_config({"fairness": {"tolerances": {"AUROC": 0.1}}})
    every = {m: 0.1 for m in FAIRNESS_METRICS}
    assert load_config({"fairness": {"tolerances": every}}).fairness.tolerances == every


def test_start_and_end_cut_their_periods() -> None:
    """Asked for 2023-02-15 to 2023-03-15 by quarter, the period is that month, named as part of 2023-Q1."""
    (p,) = periods(utc("2023-02-15"), utc("2023-03-15"), "quarter", data_end=utc("2023-07-01"))
    assert (p.start, p.end) == (utc("2023-02-15"), utc("2023-03-15")) and p.complete and p.partial
    assert p.whole == (utc("2023-01-01"), utc("2023-04-01"))
    assert p.label == "2023-Q1 (from 2023-02-15 to 2023-03-14)"
    a, b, c = periods(utc("2023-01-20"), utc("2023-03-10"), "month")
    assert [x.label for x in (a, b, c)] == ["2023-01 (from 2023-01-20 to 2023-01-31)", "2023-02",
                                             "2023-03 (from 2023-03-01 to 2023-03-09)"]
    assert not b.partial and b.whole is None and (b.start, b.end) == (utc("2023-02-01"), utc("2023-03-01"))
