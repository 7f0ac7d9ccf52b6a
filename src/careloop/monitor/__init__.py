"""Monitoring a deployed model: input and output drift, performance as labels mature, subgroups, alert burden.

    from careloop.monitor import monitor
    result = monitor("registry/readmission-30d-<id>", "store", period="month")
    result.to_dict()                    # monitor.json: periods, each with its figures and alerts
    render_html(result.to_dict())       # the self-contained monitoring report

`careloop monitor --model BUNDLE --store DIR --out OUT` (see `careloop.monitor.cli.run_monitor`) writes both.
The training reference is computed by `careloop train` and stored in the bundle (`careloop.monitor._reference`).
The alert rules are in `careloop.monitor._monitor` and, with a run's numbers, in monitor.json's `rules`.
"""

from careloop.monitor._config import MonitorConfig, MonitorConfigError, load_config
from careloop.monitor._html import figures, render_html
from careloop.monitor._monitor import KINDS, SCHEMA, MonitorError, MonitorResult, monitor, rules
from careloop.monitor._reference import ColumnReference, Reference
from careloop.monitor._stats import Binning, homogeneity_test, make_binning, psi, psi_noise

__all__ = [
    "KINDS",
    "SCHEMA",
    "Binning",
    "ColumnReference",
    "MonitorConfig",
    "MonitorConfigError",
    "MonitorError",
    "MonitorResult",
    "Reference",
    "figures",
    "homogeneity_test",
    "load_config",
    "make_binning",
    "monitor",
    "psi",
    "psi_noise",
    "render_html",
    "rules",
]
