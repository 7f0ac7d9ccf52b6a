"""What `careloop monitor --model BUNDLE --store DIR --out OUT` runs (the Typer command lives in careloop.cli).

    run_monitor(model, store, out, period, config, state) -> summary dict

writes `OUT/monitor.json` (schema careloop.monitor/1: `periods`, each with `start`, `end` and `alerts`, each alert with
its `kind` and the `feature` or `group` it concerns), `OUT/monitor.html` (the report) and `OUT/reference.json` (the
training reference the run used: the one stored in the bundle, or, when it had to be rebuilt from the store (a
bundle made before references were stored, or a config asking for other bins or months), the rebuilt one, reused by
the next run on the same bundle and config). Every input is checked before any work; errors are `CareloopError`s
with one-line messages.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from careloop.errors import CareloopError
from careloop.monitor._config import MonitorConfig, load_config
from careloop.monitor._periods import check_period, utc

REFERENCE = "reference.json"


def state_url_of(state: str | None) -> str | None:
    """A state database URL from a URL or a path to a SQLite file (which must exist)."""
    if not state:
        return None
    from careloop.state import normalize_url

    if "://" not in state:
        path = Path(state)
        if not path.is_file():
            raise CareloopError(f"--state: no state database at {path} (give its URL or the SQLite file)")
        return f"sqlite:///{path.resolve()}"
    normalize_url(state)  # refuses what the state store cannot open, naming only the scheme
    if state.startswith("sqlite:///") and not Path(state[len("sqlite:///"):]).is_file():
        raise CareloopError(f"--state: no state database at {state[len('sqlite:///'):]}")
    return state


def out_dir(out: str | Path) -> Path:
    """The output directory, made if missing (a bad --out is one line, as every bad input is, not a traceback)."""
    path = Path(out)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CareloopError(f"--out: cannot make the directory {path}: {e.strerror or e}") from None
    return path


def finite(obj: Any) -> Any:
    """`obj` with every NaN or infinite float replaced by None (monitor.json stays strict JSON)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite(v) for v in obj]
    return obj


def _cached_reference(out: Path, bundle_id: str, cfg: MonitorConfig):
    from careloop.monitor._reference import Reference

    path = out / REFERENCE
    if not path.is_file():
        return None
    try:
        ref = Reference.from_dict(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError):
        return None
    return ref if ref.compatible(bundle_id, cfg) else None


def run_monitor(model: Path, store: Path, out: Path, period: str, config: Path | None, state: str | None, *,
                start: Any = None, end: Any = None, progress=None) -> dict:
    """Monitor bundle `model` on event store `store` by `period` (week, month, quarter, year), with thresholds from
    the YAML file `config` (defaults when None) and alert burden from the service state `state` (a URL or a SQLite
    file; none when None). Writes OUT/monitor.json, OUT/monitor.html and OUT/reference.json; returns a summary:
    periods, stays, alerts (count, by kind, and one line each), the first period with an alert, the paths."""
    from careloop.monitor._html import render_html
    from careloop.monitor._monitor import monitor
    from careloop.registry import verify

    check_period(period)
    cfg = load_config(config)
    url = state_url_of(state)
    if not Path(store).is_dir():
        raise CareloopError(f"--store: {store} is not an event store directory")
    start_t, end_t = utc(start, "--start"), utc(end, "--end")
    if Path(out).exists() and not Path(out).is_dir():
        raise CareloopError(f"--out: {out} is a file, not a directory")
    bundle = verify(model)
    out = out_dir(out)
    result = monitor(bundle, store, period=period, start=start_t, end=end_t, config=cfg, state_url=url,
                     reference=_cached_reference(out, bundle.bundle_id, cfg), progress=progress)
    report = finite(result.to_dict())
    (out / REFERENCE).write_text(json.dumps(finite(result.reference.to_dict()), indent=1, allow_nan=False))
    (out / "monitor.json").write_text(json.dumps(report, indent=1, default=str, allow_nan=False))
    (out / "monitor.html").write_text(render_html(report))
    summary = result.summary()
    summary["alert_list"] = [
        {"period": a["period_start"], "kind": a["kind"], "concerns": a.get("feature") or a.get("group"),
         "metric": a["metric"], "severity": a["severity"], "value": a["value"]} for a in result.alerts]
    summary["json"] = str(out / "monitor.json")
    summary["html"] = str(out / "monitor.html")
    return finite(summary)
