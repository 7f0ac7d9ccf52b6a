"""The `careloop` command line: one command per stage of the loop."""

from __future__ import annotations

import datetime as dt
import os
import re
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from careloop import __version__
from careloop.errors import CareloopError

app = typer.Typer(
    name="careloop",
    help="From a hospital's EHR data to trustworthy clinical AI at the bedside.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)
CORES = os.cpu_count() or 1
out_console = Console()


def _version(value: bool) -> None:
    if value:
        print(f"careloop {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """careloop: EHR data -> events -> cohorts -> features -> validated models -> CDS Hooks -> monitoring."""


def _print_json(obj: object) -> None:
    """The --json output of every command: one indented JSON object on stdout."""
    import orjson

    sys.stdout.write(orjson.dumps(obj, option=orjson.OPT_INDENT_2).decode() + "\n")


def fail(message: str) -> None:
    """One clear line on stderr and exit code 2; never a traceback for a user's mistake."""
    console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


def _date(value: str | None, flag: str) -> dt.date | None:
    if value is None:
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        fail(f"{flag}: {value!r} is not a date (use YYYY-MM-DD)")
    return None


def _writable(path: Path, flag: str, *, folder: bool = False) -> None:
    """Stop now, before any heavy work, when an output file (with `folder`: an output folder) cannot be written at
    `path`: one line naming the option and why. Nothing is created or left behind."""
    reason = _why_unwritable(path, folder=folder)
    if reason is not None:
        fail(f"{flag} {path}: cannot write it ({reason})")


def _why_unwritable(path: Path, *, folder: bool) -> str | None:
    import tempfile

    if path.is_dir() and not folder:
        return "it is a folder"
    if folder and path.exists() and not path.is_dir():
        return "it is a file, not a folder"
    where = path if folder else path.parent
    base = next((p for p in (where, *where.parents) if p.exists()), Path("."))
    if not base.is_dir():
        return f"{base} is a file, not a folder"
    if path.is_file():
        try:  # opened to append, so left as it is
            with open(path, "ab"):
                pass
        except OSError as exc:
            return exc.strerror or type(exc).__name__
    try:  # a real write, since permission bits say nothing for root or read-only mounts
        with tempfile.TemporaryFile(dir=base):
            pass
    except OSError as exc:
        return f"cannot create a file in {base}: {exc.strerror or type(exc).__name__}"
    return None


def _write_failed(exc: OSError, path: Path, flag: str) -> None:
    """An output that could not be written after all (a full disk, a folder made meanwhile): one line."""
    fail(f"{flag} {path}: cannot write it ({_why_not(exc, path)})")


@app.command()
def synth(
    patients: Annotated[int, typer.Option("--patients", "-n", help="Number of patients to generate.")] = 5000,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives byte-identical output.")] = 0,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory.")] = Path("hospital"),
    workers: Annotated[int, typer.Option(help="Worker processes (output does not depend on it).")] = CORES,
    start: Annotated[str | None, typer.Option(help="First day of the data window (YYYY-MM-DD).")] = None,
    end: Annotated[str | None, typer.Option(help="Day after the last day of the window (YYYY-MM-DD).")] = None,
    drift: Annotated[bool, typer.Option("--drift", help="From the drift date: creatinine assay shift, ICD-10 "
                                        "coding change, older and sicker new patients.")] = False,
    drift_date: Annotated[str | None, typer.Option(help="Drift date, with --drift (default: two thirds into the "
                                                   "window).")] = None,
    bias: Annotated[bool, typer.Option("--bias", help="A subgroup's chronic conditions are under-recorded.")] = False,
    bias_group: Annotated[str | None, typer.Option(help="Group for --bias (only with it), e.g. race:black "
                                                   "(the default), ethnicity:hispanic, language:es, "
                                                   "payer:medicaid.")] = None,
    scenario: Annotated[list[str] | None, typer.Option(help="Scenario by name (drift, bias); repeatable.")] = None,
    bundle_format: Annotated[str, typer.Option(help="Bundle files as json or json.gz.")] = "json.gz",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a hospital already in --out.")] = False,
    updates: Annotated[bool, typer.Option("--updates", help="Also write two nightly _since exports after the Bulk "
                                          "export (new versions of Patients, withdrawn results, resent Encounters) "
                                          "under OUT/updates/.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON on stdout.")] = False,
) -> None:
    """Generate a synthetic hospital: FHIR R4 Bundles, a Bulk Data export and the ground truth."""
    from careloop.synth import generate, make_config

    scenarios = list(scenario or [])
    if drift:
        scenarios.append("drift")
    if bias:
        scenarios.append("bias")
    try:
        cfg = make_config(
            patients=patients, seed=seed, out=out, workers=workers, start=_date(start, "--start"),
            end=_date(end, "--end"), scenarios=tuple(dict.fromkeys(scenarios)),
            drift_date=_date(drift_date, "--drift-date"), bias_group=bias_group, bundle_format=bundle_format,
            overwrite=overwrite, updates=updates,
        )
    except CareloopError as exc:
        fail(str(exc))
        return
    with Progress(TextColumn("[bold]synth[/]"), BarColumn(), MofNCompleteColumn(), TextColumn("patients"),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=as_json,
                  disable=not sys.stderr.isatty() and as_json) as bar:
        task = bar.add_task("synth", total=cfg.patients)
        try:
            result = generate(cfg, progress=lambda n: bar.advance(task, n))
        except OSError as exc:
            fail(f"cannot write {cfg.out}: {exc.strerror or exc}")
            return
    if as_json:
        _print_json(result.to_json())
        return
    _print_synth_summary(result)


def _print_synth_summary(result) -> None:
    t = Table(title=f"Synthetic hospital written to {result.out}", show_header=True)
    t.add_column("resource type")
    t.add_column("count", justify="right")
    for k, v in result.counts.items():
        t.add_row(k, f"{v:,}")
    t.add_row("[bold]total[/]", f"[bold]{sum(result.counts.values()):,}[/]")
    out_console.print(t)
    s = Table(title="Inpatient stays by site", show_header=True)
    for col in ("site", "stays", "30-day readmission", "in-hospital mortality"):
        s.add_column(col, justify="right" if col != "site" else "left")
    for k, v in result.by_site.items():
        s.add_row(k, f"{v['stays']:,}", f"{v['readmission_rate_30d']:.1%}", f"{v['inhospital_mortality']:.1%}")
    s.add_row("[bold]all[/]", f"[bold]{result.stays:,}[/]", f"[bold]{result.readmission_rate:.1%}[/]",
              f"[bold]{result.inhospital_mortality:.1%}[/]")
    out_console.print(s)
    out_console.print(
        f"patients: {result.patients:,}   inpatient stays: {result.stays:,}   "
        f"30-day readmission rate (uncensored discharges alive): {result.readmission_rate:.1%}   "
        f"bytes written: {result.bytes_written / 1e6:,.1f} MB"
    )
    out_console.print(f"Bulk export: {result.out}/ndjson/   Bundles: {result.out}/bundles/   "
                      f"Truth: {result.out}/truth/stays.parquet")
    for day, changes in result.updates.items():
        out_console.print(f"Nightly export {result.out}/updates/{day}/: "
                          + ", ".join(f"{what} {n:,}" for what, n in changes.items()))


@app.command()
def ingest(
    sources: Annotated[list[str], typer.Argument(help="Bulk export folders, Bundle files or folders, FHIR base URLs.")],
    store: Annotated[Path, typer.Option("--store", "-s", help="Event store directory (created if missing).")],
    workers: Annotated[int, typer.Option(help="Worker processes.")] = CORES,
    as_json: Annotated[bool, typer.Option("--json", help="Print the IngestReport as one JSON object.")] = False,
    token: Annotated[str | None, typer.Option(envvar="CARELOOP_FHIR_TOKEN", show_envvar=True,
                                              help="Bearer token for a FHIR server (prefer the env variable).")] = None,
    client_id: Annotated[str | None, typer.Option(help="SMART Backend Services client id.")] = None,
    private_key: Annotated[Path | None, typer.Option(help="PEM private key for the client assertion.")] = None,
    key_id: Annotated[str | None, typer.Option(help="kid of the signing key.")] = None,
    alg: Annotated[str, typer.Option(help="Client assertion algorithm: RS384 or ES384.")] = "RS384",
    token_url: Annotated[str | None, typer.Option(help="Token endpoint (default: from smart-configuration).")] = None,
    scope: Annotated[str, typer.Option(help="Scopes to request.")] = "system/*.read",
    types: Annotated[str | None, typer.Option(help="Comma-separated resource types to fetch from a server.")] = None,
    patient: Annotated[list[str] | None, typer.Option(help="Fetch only this patient's data (repeatable).")] = None,
    page_size: Annotated[int, typer.Option(help="_count for server searches.")] = 200,
) -> None:
    """Ingest FHIR (Bulk NDJSON, Bundles, or a FHIR server) into the event store, losing nothing."""
    import logging

    from careloop.ingest.runner import ingest as run_ingest

    logging.getLogger("httpx").setLevel(logging.WARNING)  # request URLs are noise; tokens are never logged
    rest: dict = {}
    if any(s.startswith(("http://", "https://")) for s in sources):
        rest = {"token": token, "client_id": client_id, "key_id": key_id, "algorithm": alg, "token_url": token_url,
                "scope": scope, "page_size": page_size}
        if private_key is not None:
            try:
                rest["private_key_pem"] = private_key.read_bytes()
            except OSError as exc:
                fail(f"--private-key: cannot read {private_key}: {exc.strerror}")
        if types:
            rest["types"] = tuple(t.strip() for t in types.split(",") if t.strip())
        if patient:
            rest["patients"] = tuple(patient)
        rest = {k: v for k, v in rest.items() if v is not None}
    for s in sources:
        if not s.startswith(("http://", "https://")) and not Path(s).exists():
            fail(f"source {s} does not exist")
    _writable(store, "--store", folder=True)
    with Progress(TextColumn("[bold]ingest[/]"), BarColumn(), TextColumn("{task.completed:,} resources"),
                  TimeElapsedColumn(), console=console, transient=True, disable=as_json) as bar:
        task = bar.add_task("ingest", total=None)
        try:
            report = run_ingest(list(sources), store, workers=workers, rest_options=rest,
                                progress=lambda r: bar.advance(task, sum(r.counts["input"].values())))
        except CareloopError as exc:
            fail(str(exc))
            return
    if as_json:
        _print_json(report.to_json())
        return
    _print_ingest_report(report)


def _print_ingest_report(report) -> None:
    d = report.to_json()
    t = Table(title=f"Ingested into {d['store']}")
    for col in ("resource type", "input", "loaded", "quarantined", "skipped"):
        t.add_column(col, justify="left" if col == "resource type" else "right")
    for rtype, v in d["by_type"].items():
        t.add_row(rtype, *(f"{v[k]:,}" for k in ("input", "loaded", "quarantined", "skipped")))
    t.add_row("[bold]total[/]", *(f"[bold]{d[k]:,}[/]" for k in ("input", "loaded", "quarantined", "skipped")))
    out_console.print(t)
    if d["reasons"]:
        r = Table(title="Why: quarantine reasons, skip rules, records loaded without events")
        r.add_column("reason")
        r.add_column("resources", justify="right")
        for k, v in d["reasons"].items():
            r.add_row(k, f"{v:,}")
        out_console.print(r)
    if d["skipped_files"]:
        out_console.print(f"files not read (not named .ndjson, .jsonl or .json): {len(d['skipped_files'])}: "
                          + ", ".join(d["skipped_files"][:10]) + (" ..." if len(d["skipped_files"]) > 10 else ""),
                          highlight=False)
    rate = f"{d['resources_per_second']:,} resources/s" if d["resources_per_second"] else ""
    out_console.print(f"reconciled: {d['reconciled']}   units: {d['units']} new, {d['units_already_done']} already "
                      f"ingested   {d['seconds']:.1f} s {rate}")


@app.command()
def cohort(
    task: Annotated[str, typer.Option(help="Task name (e.g. readmission-30d) or path to a task YAML.")],
    store: Annotated[Path, typer.Option("--store", "-s", help="Event store directory.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Cohort Parquet file to write.")],
    engine: Annotated[str, typer.Option(help="duckdb (default) or spark.")] = "duckdb",
    data_end: Annotated[str | None, typer.Option(help="End of the data (default: the last encounter time).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Build a task's cohort: index stays, exclusion steps with counts, labels (null when censored), splits."""
    import orjson
    import pyarrow.parquet as pq

    from careloop.engines import engine as make_engine
    from careloop.tasks.cohort import build_cohort
    from careloop.tasks.spec import load_task

    _writable(out, "--out")
    end = None
    if data_end:
        d = _date(data_end, "--data-end")
        end = dt.datetime.combine(d, dt.time(), dt.UTC) if d else None
    try:
        spec = load_task(task)
        eng = make_engine(engine, store)
        result = build_cohort(spec, eng, dialect=eng.dialect, data_end=end)
    except CareloopError as exc:
        fail(str(exc))
        return
    summary = result.summary()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(result.table, out, compression="zstd")
        out.with_suffix(".summary.json").write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2))
    except OSError as exc:
        _write_failed(exc, out, "--out")
        return
    if as_json:
        _print_json(summary)
        return
    t = Table(title=f"Cohort {spec.name}: {out}")
    t.add_column("step")
    t.add_column("removed", justify="right")
    t.add_column("remaining", justify="right")
    for st in summary["steps"]:
        t.add_row(st["step"], f"{st['removed']:,}", f"{st['remaining']:,}")
    out_console.print(t)
    sp = Table(title="Splits (by patient)")
    for col in ("split", "stays", "patients", "labelled", "censored", "positives", "prevalence"):
        sp.add_column(col, justify="left" if col == "split" else "right")
    for name, v in summary["splits"].items():
        if v["stays"]:
            prev = f"{v['prevalence']:.1%}" if v["prevalence"] is not None else "-"
            sp.add_row(name, f"{v['stays']:,}", f"{v['patients']:,}", f"{v['labelled']:,}", f"{v['censored']:,}",
                       f"{v['positives']:,}", prev)
    out_console.print(sp)


@app.command()
def features(
    cohort_file: Annotated[Path, typer.Option("--cohort", help="Cohort Parquet from `careloop cohort`.")],
    store: Annotated[Path, typer.Option("--store", "-s", help="Event store directory.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Feature matrix Parquet file to write.")],
    feature_set: Annotated[str, typer.Option("--features", help="Feature set name or YAML path.")] = "readmission",
    engine: Annotated[str, typer.Option(help="duckdb (default) or spark.")] = "duckdb",
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Extract point-in-time features for a cohort: one row per index stay, with missingness per feature."""
    import orjson
    import pyarrow.parquet as pq

    from careloop.engines import engine as make_engine
    from careloop.features.engine import extract
    from careloop.features.spec import load_feature_set

    _writable(out, "--out")
    try:
        fs = load_feature_set(feature_set)
        if not cohort_file.exists():
            raise CareloopError(f"--cohort: {cohort_file} does not exist (run `careloop cohort` first)")
        table = _cohort_table(cohort_file)
        result = extract(fs, table, make_engine(engine, store))
    except CareloopError as exc:
        fail(str(exc))
        return
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(result.table, out, compression="zstd")
        out.with_suffix(".summary.json").write_bytes(orjson.dumps(result.summary, option=orjson.OPT_INDENT_2))
    except OSError as exc:
        _write_failed(exc, out, "--out")
        return
    if as_json:
        _print_json(result.summary)
        return
    t = Table(title=f"Features {fs.name}: {result.table.num_rows:,} index stays -> {out}")
    for col in ("feature", "description", "missing"):
        t.add_column(col, justify="right" if col == "missing" else "left")
    for c in result.summary["columns"]:
        t.add_row(c["column"], c["description"][:60], f"{c['missing_fraction']:.0%}")
    out_console.print(t)


def _cohort_table(path: Path):
    """The cohort Parquet file `careloop cohort` wrote; CareloopError when `path` is anything else."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if path.is_dir():
        raise CareloopError(f"--cohort {path}: not a Parquet cohort file (it is a folder)")
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        why = str(exc).splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CareloopError(f"--cohort {path}: not a Parquet cohort file ({why})") from None
    lacking = [c for c in ("encounter_id", "subject_id", "admit_time", "index_time") if c not in table.column_names]
    if lacking:
        raise CareloopError(f"--cohort {path}: not a Parquet cohort file (no column {', '.join(lacking)}; write it "
                            "with `careloop cohort`)")
    return table


store_app = typer.Typer(help="Inspect an event store.", no_args_is_help=True)
app.add_typer(store_app, name="store")


@store_app.command("info")
def store_info(
    store: Annotated[Path, typer.Argument(help="Event store directory.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """Counts by table and code system, date ranges, top codes, quarantine summary."""
    from careloop.store import EventStore, info

    try:
        data = info(EventStore.open(store))
    except CareloopError as exc:
        fail(str(exc))
        return
    if as_json:
        _print_json(data)
        return
    t = Table(title=f"Event store {data['store']}")
    t.add_column("table")
    t.add_column("rows", justify="right")
    for k, v in data["tables"].items():
        t.add_row(k, f"{v:,}")
    out_console.print(t)
    s = Table(title="Events by code system")
    s.add_column("system")
    s.add_column("events", justify="right")
    for k, v in data["events_by_system"].items():
        s.add_row(k, f"{v:,}")
    out_console.print(s)
    c = Table(title="Top codes")
    for col in ("code", "events", "with a number"):
        c.add_column(col, justify="left" if col == "code" else "right")
    for row in data["top_codes"]:
        c.add_row(row["code"], f"{row['events']:,}", f"{row['numeric']:,}")
    out_console.print(c)
    out_console.print(f"subjects: {data['subjects']:,}   event times: {data['event_time_range'][0]} .. "
                      f"{data['event_time_range'][1]}   encounters: {data['encounters_by_class']}")
    q = data["quarantine_by_reason"]
    out_console.print("quarantine: " + (", ".join(f"{k}: {v:,}" for k, v in q.items()) if q else "empty"))



def _steps(label: str, as_json: bool):
    """A spinner with the current step (training has phases, not a count), and a callback that moves it on."""
    from rich.progress import SpinnerColumn

    bar = Progress(SpinnerColumn(), TextColumn(f"[bold]{label}[/]"), TextColumn("{task.description}"),
                   TimeElapsedColumn(), console=console, transient=True, disable=as_json)
    return bar


@app.command()
def train(
    registry: Annotated[Path, typer.Option("--registry", "-r", help="Registry folder for the new bundle.")],
    task: Annotated[str | None, typer.Option(help="Task name or YAML (with --store).")] = None,
    store: Annotated[Path | None, typer.Option("--store", "-s", help="Event store directory.")] = None,
    feature_set: Annotated[str, typer.Option("--features", help="Feature set name or YAML (with --store).")]
    = "readmission",
    table: Annotated[Path | None, typer.Option("--table", help="Flat extract (.csv/.tsv/.parquet), one row per stay.")]
    = None,
    label: Annotated[str | None, typer.Option(help="Label column (with --table).")] = None,
    positive: Annotated[str | None, typer.Option(help="Label value that counts as the outcome (with --table).")]
    = None,
    id_col: Annotated[str | None, typer.Option("--id", help="Patient id column: splits are by patient.")] = None,
    row_id: Annotated[str | None, typer.Option("--row-id", help="Row (stay) id column, kept out of the inputs.")]
    = None,
    group: Annotated[list[str] | None, typer.Option("--group", help="Group attribute for fairness (repeatable).")]
    = None,
    exclude: Annotated[list[str] | None, typer.Option("--exclude", help="Column not to use as an input "
                                                      "(repeatable; default with --store: race, ethnicity).")] = None,
    categorical: Annotated[list[str] | None, typer.Option("--categorical", help="Treat a numeric column as "
                                                          "categorical (repeatable).")] = None,
    missing: Annotated[list[str] | None, typer.Option("--missing", help="Missing-value marker in a CSV (repeatable; "
                                                      "default: '', ?, NA, N/A, NULL, NaN, None).")] = None,
    split_column: Annotated[str | None, typer.Option(help="Column holding train/calibration/test (with --table).")]
    = None,
    name: Annotated[str | None, typer.Option(help="Bundle name (default: the task, or the table's stem).")] = None,
    estimator: Annotated[list[str] | None, typer.Option("--estimator", help="lightgbm and/or logistic "
                                                        "(default both; the better on calibration is chosen).")]
    = None,
    calibration: Annotated[str, typer.Option(help="sigmoid (logistic recalibration) or isotonic.")] = "sigmoid",
    policy: Annotated[str, typer.Option(help="Operating point: budget, ppv, sensitivity or threshold.")] = "budget",
    target: Annotated[float, typer.Option(help="Policy target: share flagged, PPV, sensitivity or threshold.")]
    = 0.10,
    documentation: Annotated[Path | None, typer.Option(help="YAML of the facts only people can supply "
                                                       "(developer, intended use...).")] = None,
    clinician: Annotated[Path | None, typer.Option(help="Table of the clinicians' own risk estimates per stay "
                                                   "(encounter_id + --clinician-column): adds the team section and "
                                                   "a learned deferral policy.")] = None,
    clinician_column: Annotated[str, typer.Option(help="Column of --clinician.")] = "clinician_risk_30d",
    n_boot: Annotated[int, typer.Option("--n-boot", help="Bootstrap resamples for the 95% intervals.")] = 1000,
    min_group_size: Annotated[int, typer.Option(help="Smaller fairness groups are suppressed.")] = 50,
    tolerance: Annotated[list[str] | None, typer.Option("--tolerance", help="Fairness tolerance METRIC=VALUE "
                                                        "(repeatable), e.g. auroc=0.05, tpr=0.1.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the estimators, the bootstrap intervals and the explanation "
                                      "sample; with --table also of the patient split (unless --split-column). "
                                      "With --store the split is the task's own (its split.seed), not this. Both "
                                      "are recorded in bundle.json.")] = 0,
    data_end: Annotated[str | None, typer.Option(help="With --store: train on the data as it stood on this date "
                                                 "(YYYY-MM-DD): stays discharged after it are left out and outcomes "
                                                 "whose window runs past it are censored (default: the end of the "
                                                 "store's data).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the bundle summary as JSON before its path.")]
    = False,
) -> None:
    """Train LightGBM and logistic models, calibrate, validate with CIs, check fairness, explain, and register an
    immutable bundle with its HTML/JSON report, model card, HTI-1 source attributes and monitoring reference. The
    last line printed is the bundle's path."""
    from careloop.workflows import _data
    from careloop.workflows.train import TrainConfig
    from careloop.workflows.train import train as run_train

    _writable(registry, "--registry", folder=True)
    try:
        if (table is None) == (store is None):
            raise CareloopError("give either --store DIR with --task NAME, or --table FILE")
        if policy not in ("budget", "ppv", "sensitivity", "threshold"):
            raise CareloopError(f"--policy: {policy!r} is not one of budget, ppv, sensitivity, threshold")
        if not 0 < target < 1:
            raise CareloopError(f"--target: {target} must lie strictly between 0 and 1")
        if n_boot < 100:
            raise CareloopError("--n-boot: at least 100 resamples are needed for a 95% interval")
        tolerances = _tolerances(tolerance or [])
        if clinician is not None:  # read now, not after the training it would end
            estimates = _data.read_table(clinician, flag="--clinician")
            if clinician_column not in estimates.column_names:
                raise CareloopError(f"--clinician: no column {clinician_column!r} in {clinician.name} (see "
                                    "--clinician-column)")
        doc = documentation
        end_day = _date(data_end, "--data-end")
        if end_day is not None and table is not None:
            raise CareloopError("--data-end applies to --store (a flat --table has no index times)")
        if table is not None:
            if not label or not id_col:
                raise CareloopError("--table needs --label and --id (and --positive unless the label is boolean)")
            if doc is None:
                raise CareloopError("--table needs --documentation FILE (the model card's human facts; "
                                    "start from documentation/readmission-30d.yaml)")
            data = _data.from_table(table, label=label, positive=positive, id_col=id_col, groups=tuple(group or ()),
                                    row_id=row_id, exclude=tuple(exclude or ()),
                                    categorical=tuple(categorical or ()),
                                    missing=tuple(missing) if missing else _data.MISSING_MARKERS,
                                    split_col=split_column, seed=seed)
            bundle_name = name or table.name.split(".")[0]
        else:
            if not task:
                raise CareloopError("--store needs --task")
            if doc is None:
                default = Path(__file__).resolve().parents[2] / "documentation" / f"{Path(task).stem}.yaml"
                doc = default if default.is_file() else None
            if doc is None:
                raise CareloopError(f"no documentation/{Path(task).stem}.yaml: give --documentation FILE")
            with _steps("train", as_json) as bar:
                t = bar.add_task("preparing data", total=None)
                data = _data.from_store(store, task, feature_set, groups=tuple(group) if group else None,
                                        exclude=tuple(exclude) if exclude is not None else _data.PROTECTED_DEFAULT,
                                        data_end=dt.datetime.combine(end_day, dt.time(), dt.UTC) if end_day
                                        else None, progress=lambda m: bar.update(t, description=m))
            bundle_name = name or Path(task).stem
        cfg = TrainConfig(name=bundle_name, estimators=tuple(estimator or ("lightgbm", "logistic")),
                          calibration=calibration, policy=policy, target=target, n_boot=n_boot, seed=seed,
                          min_group_size=min_group_size, tolerances=tolerances, documentation=doc,
                          clinician=clinician, clinician_column=clinician_column)
        with _steps("train", as_json) as bar:
            t = bar.add_task("starting", total=None)
            bundle = run_train(data, registry, cfg, progress=lambda m: bar.update(t, description=m))
    except (CareloopError, ValueError) as exc:
        fail(str(exc))
        return
    if as_json:
        _print_json(bundle.summary())
    else:
        _print_train_summary(bundle)
    print(bundle.path)


def _tolerances(items: list[str]) -> dict[str, float] | None:
    if not items:
        return None
    out = {}
    for it in items:
        key, _, value = it.partition("=")
        try:
            out[key.strip()] = float(value)
        except ValueError:
            raise CareloopError(f"--tolerance: {it!r} is not METRIC=NUMBER") from None
    return out


def _fmt(est: dict | None, pct: bool = False) -> str:
    if not est or est.get("estimate") is None:
        return "-"
    f = (lambda v: f"{v:.1%}") if pct else (lambda v: f"{v:.3f}")
    ci = est.get("ci")
    return f"{f(est['estimate'])} ({f(ci[0])}–{f(ci[1])})" if ci else f(est["estimate"])


def _print_train_summary(bundle) -> None:
    rep = bundle.read_json("report.json")
    t = Table(title=f"{rep['title']} — test split, 95% bootstrap intervals")
    for col in ("score", "AUROC", "AUPRC", "Brier", "cal. slope", "sens. at op.", "PPV at op."):
        t.add_column(col, justify="left" if col == "score" else "right")
    for k in rep.get("order") or rep["scores"]:
        ev = rep["scores"][k]
        m, op = ev["metrics"], ev.get("operating_point") or {}
        t.add_row(k + (" ★" if k == rep["primary"] else ""), _fmt(m["auroc"]), _fmt(m["auprc"]), _fmt(m["brier"]),
                  _fmt(m["calibration_slope"]), _fmt(op.get("sensitivity"), True), _fmt(op.get("ppv"), True))
    out_console.print(t)
    out_console.print(f"[bold]Operating point:[/] {rep['operating_point']['rationale']}")
    flags = rep["fairness"]["flags"]
    if flags:
        out_console.print(f"[bold red]Fairness: {len(flags)} disparity flag(s)[/]")
        for f in flags:
            out_console.print(f"  • {f['message']}", highlight=False)
    else:
        out_console.print("[green]Fairness: no disparity beyond tolerance[/]")
    out_console.print(f"Report: {bundle.path / 'report.html'}")


@app.command()
def predict(
    model: Annotated[Path, typer.Option("--model", "-m", help="Model bundle directory.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Predictions file (.parquet or .csv).")],
    table: Annotated[Path | None, typer.Option("--table", help="Flat table to score.")] = None,
    store: Annotated[Path | None, typer.Option("--store", "-s", help="Event store: its index stays of the bundle's "
                                               "own task (task.yaml) are scored.")] = None,
    task: Annotated[str | None, typer.Option(help="With --store: needed only for a bundle without task.yaml; "
                                             "otherwise checked against the bundle's task (a task defining "
                                             "other stays is refused).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Score every row of a table, or every index stay of the bundle's own task in an event store, with a verified
    bundle."""
    from careloop.registry import verify
    from careloop.workflows.predict import predict as run_predict

    _writable(out, "--out")
    try:
        bundle = verify(model)
        summary = run_predict(bundle, out, table=table, store=store, task=task)
    except (CareloopError, ValueError) as exc:
        fail(str(exc))
        return
    if as_json:
        _print_json(summary)
    else:
        out_console.print(f"{summary['rows']:,} predictions → {out} (bundle {bundle.bundle_id[:12]}, "
                          f"{summary['flagged'] if summary['flagged'] is not None else '-'} flagged)")


models_app = typer.Typer(help="List and inspect registered model bundles.", no_args_is_help=True)
app.add_typer(models_app, name="models")


@models_app.command("list")
def models_list(
    registry: Annotated[Path, typer.Option("--registry", "-r", help="Registry folder.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """Every bundle in the registry, newest first, with its integrity checked. Exit code 1 when any bundle fails
    its integrity check (after listing them all); 2 when --registry is not a folder."""
    from careloop.registry import BundleIntegrityError, Registry, verify

    if not registry.is_dir():
        fail(f"--registry {registry}: " + ("not a folder" if registry.exists() else "no such folder"))
    rows = []
    for b in Registry(registry).bundles():
        try:
            verify(b.path)
            row = {**b.summary(), "integrity": "ok"}
        except BundleIntegrityError as exc:
            row = {"bundle_id": b.bundle_id, "name": b.name, "created": b.created, "path": str(b.path),
                   "integrity": f"FAILED: {exc}"}
        rows.append(row)
    failed = [Path(r["path"]).name for r in rows if r["integrity"] != "ok"]
    if as_json:
        _print_json(rows)
        _failed_integrity(failed)
        return
    t = Table(title=f"Model bundles in {registry}")
    for col in ("id", "name", "created", "estimator", "test AUROC", "threshold", "integrity"):
        t.add_column(col)
    for r in rows:
        auc, thr = r.get("test_auroc"), r.get("threshold")
        t.add_row(r["bundle_id"][:12], r["name"], r["created"], r.get("estimator") or "-",
                  f"{auc:.3f}" if auc is not None else "-", f"{thr:.3f}" if thr is not None else "-",
                  r["integrity"] if r["integrity"] == "ok" else "[red]FAILED[/]")
    out_console.print(t)
    _failed_integrity(failed)


def _failed_integrity(failed: list[str]) -> None:
    """Exit code 1, once every bundle has been listed, when any failed its integrity check."""
    if failed:
        console.print(f"[bold red]{len(failed)} bundle(s) failed the integrity check:[/] {', '.join(failed)}",
                      highlight=False, soft_wrap=True)
        raise typer.Exit(code=1)


@models_app.command("show")
def models_show(
    ref: Annotated[str, typer.Argument(help="Bundle path, directory name, or id prefix (at least 6 characters).")],
    registry: Annotated[Path, typer.Option("--registry", "-r", help="Registry folder.")] = Path("registry"),
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """One bundle: identity, lineage, metrics, operating point and files (verified first)."""
    from careloop.registry import RegistryError, load

    try:
        b = load(ref, registry)
    except (CareloopError, RegistryError) as exc:
        fail(str(exc))
        return
    meta = b.metadata
    doc = {**b.summary(), "code_version": meta.get("code_version"),
           "training_fingerprint": meta.get("training_fingerprint"), "operating_point": meta.get("operating_point"),
           "metrics": meta.get("metrics"), "features": meta.get("features"), "files": b.files}
    if as_json:
        _print_json(doc)
        return
    t = Table(title=f"Bundle {b.name} ({b.bundle_id})", show_header=False)
    for k in ("path", "created", "task", "estimator", "code_version", "training_fingerprint"):
        t.add_row(k, str(doc.get(k)))
    for k, v in (doc["metrics"] or {}).items():
        if v is not None:
            t.add_row(f"test {k}", f"{v:.4f}")
    t.add_row("operating point", (doc["operating_point"] or {}).get("rationale", "-"))
    t.add_row("files", ", ".join(sorted(b.files)))
    out_console.print(t)



@app.command()
def serve(
    model: Annotated[Path, typer.Option("--model", "-m", help="Model bundle directory (verified before serving).")],
    config: Annotated[Path, typer.Option("--config", "-c", help="Service YAML: trusted clients, admin credential, "
                                                              "state store URL, base URL, alert policy.")],
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port (1-65535).")] = 8080,
    dashboard: Annotated[bool, typer.Option(help="Also serve the web dashboard under /dashboard.")] = False,
    store: Annotated[Path | None, typer.Option(help="Event store for the dashboard's worklist and patient pages.")]
    = None,
    monitor: Annotated[Path | None, typer.Option(help="Folder of `careloop monitor` output for the dashboard.")]
    = None,
    users: Annotated[Path | None, typer.Option(help="Dashboard users (YAML: username -> role, password_hash).")]
    = None,
    demo: Annotated[bool, typer.Option(help="Dashboard demo accounts and synthetic activity (never in production).")]
    = False,
    workers: Annotated[int, typer.Option(min=1, max=64, help="Worker processes (one per core: each scores on its own "
                                                           "core; state, jti claims and the audit chain are shared "
                                                           "through the state store).")] = 1,
    pin_cpus: Annotated[bool, typer.Option("--pin-cpus", help="With --workers: each worker process on a CPU of its "
                                                                "own (Linux).")] = False,
    tls_cert: Annotated[Path | None, typer.Option(help="Serve HTTPS with this PEM certificate (chain) ...")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="... and its PEM private key (TLS 1.2 at least).")] = None,
    proxy: Annotated[str | None, typer.Option(help="Addresses (comma-separated IPs or networks) of the "
                                                   "TLS-terminating proxy in front: its X-Forwarded-Proto/For are "
                                                   "trusted. Plain HTTP off loopback needs it.")] = None,
) -> None:
    """Serve the model as CDS Hooks 2.0 services (discovery, encounter-discharge, patient-view, feedback), and
    optionally the dashboard (worklist, patient, model, monitoring and governance pages behind sign-in). Off
    loopback, over HTTPS only: TLS here (--tls-cert, --tls-key) or at a proxy in front (--proxy)."""
    import uvicorn

    from careloop.serve.asgi import Options, make_app
    from careloop.serve.config import load_config
    from careloop.serve.tls import check_certificate, listening_policy, server_context

    opts = Options(model=str(model), config=str(config), dashboard=dashboard, store=str(store) if store else None,
                   monitor=str(monitor) if monitor else None, users=str(users) if users else None, demo=demo,
                   pin_cpus=pin_cpus)
    tls = tls_cert is not None or tls_key is not None
    try:
        if tls and (tls_cert is None or tls_key is None):
            raise CareloopError("--tls-cert and --tls-key go together")
        proxies = _proxy_addresses(proxy) if proxy is not None else None
        cfg = load_config(config)
        listening_policy(host, tls=tls, proxy=proxies, base_url=cfg.base_url)
        cert = check_certificate(tls_cert, tls_key, base_url=cfg.base_url) if tls else None
        if cfg.clock.ntp_server is not None:
            from careloop.serve.clock import check

            clock_ok, said = check(cfg.clock.ntp_server, cfg.clock.max_skew_ms, required=cfg.clock.required)
            if not clock_ok:
                raise CareloopError(said)
            console.print(f"warning: {said}" if said.startswith("clock not checked") else said, highlight=False)
        app_ = make_app(opts, seed=True, config=cfg)  # checks everything once, here, before any worker starts
        service = app_.state.service
    except (CareloopError, ValueError) as exc:
        fail(str(exc))
        return
    for warning in cert.warnings if cert else []:
        console.print(f"warning: {warning}", highlight=False)
    scheme = "https" if tls else "http"
    served = {"ssl_certfile": str(tls_cert), "ssl_keyfile": str(tls_key), "ssl_context_factory": server_context} \
        if tls else {}
    if proxies is not None:
        served["forwarded_allow_ips"] = proxies
    if demo and dashboard and store is not None:
        from careloop.web.demo import sign_in_text

        console.print(sign_in_text(f"{scheme}://{host}:{port}"), highlight=False)
    console.print(f"careloop serving bundle {service.bundle.bundle_id[:12]} at {scheme}://{host}:{port}/cds-services "
                  f"(state {service.config.state.split('://')[0]}"
                  + (f", {workers} workers" if workers > 1 else "")
                  + (", one CPU each" if workers > 1 and pin_cpus else "") + ")"
                  + (f"; dashboard at {scheme}://{host}:{port}/dashboard" if dashboard else ""), highlight=False)
    if service.audit.signing_key is None:
        console.print("warning: no audit.signing_key_file in the config: the hash chain shows an edited, deleted or "
                      "reordered record, but not the newest records cut off; sign checkpoints (`careloop audit "
                      "keygen`) or keep the head that `careloop audit verify` prints and pass it as --expect",
                      highlight=False)
    if workers == 1:
        uvicorn.run(app_, host=host, port=port, log_level="warning", access_log=False, **served)
        return
    service.close()
    opts.export()  # the workers rebuild the same app from these options (and share the dashboard's cookie secret)
    uvicorn.run("careloop.serve.asgi:build", factory=True, workers=workers, host=host, port=port,
                log_level="warning", access_log=False, **served)


def _proxy_addresses(value: str) -> str:
    """`--proxy`: comma-separated IP addresses or networks, as uvicorn's forwarded_allow_ips takes them; never "*"
    (anyone could then claim any client address and scheme)."""
    import ipaddress

    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise CareloopError("--proxy needs the proxy's address (an IP address or network)")
    for item in items:
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise CareloopError(f"--proxy {item!r}: not an IP address or network (a proxy is named by its address; "
                                "'*' would trust every client's forwarded headers)") from None
    return ",".join(items)


audit_app = typer.Typer(help="The service's audit log: verify, report, export, purge.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")


@audit_app.command("verify")
def audit_verify(
    state: Annotated[str, typer.Option("--state", help="State store URL (sqlite:///path or postgresql://...).")],
    verify_key: Annotated[Path | None, typer.Option(
        "--verify-key", help="Ed25519 public key (PEM) of the service's audit signing key: also check the signed "
        "checkpoints, which expose a rewrite of the whole chain from some record on.")] = None,
    expect: Annotated[str | None, typer.Option(
        "--expect", help="SEQ:HASH@TIME, the head an earlier verification printed (kept outside the database): "
        "that record must still be there, unchanged (or purged once 183 days old), which exposes a cut of the tail "
        "or a forged retention anchor.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Walk the hash chain; exit 1 and name the first bad record if the log was edited, cut or reordered."""
    from careloop.audit import AuditLog, missing_log
    from careloop.state import iso_z

    expected = _audit_head(expect) if expect is not None else None
    if expect is not None and expected is None:
        fail("--expect must be SEQ:HASH@TIME as `careloop audit verify` prints it (a number, a colon, 64 hex "
             "digits, and the head's UTC time)")
        return
    key = None
    if verify_key is not None:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
        from cryptography.hazmat.primitives.serialization import load_pem_public_key

        try:
            key = load_pem_public_key(verify_key.read_bytes())
        except (OSError, ValueError) as exc:
            fail(f"--verify-key {verify_key}: not a readable PEM public key ({exc})")
            return
        if not isinstance(key, Ed25519PublicKey):
            fail(f"--verify-key {verify_key}: not an Ed25519 public key")
            return
    try:
        missing = missing_log(state)
        if missing:
            fail(f"nothing to verify: {missing}")
            return
        log = AuditLog.open(state)
        result = log.verify(verify_key=key, expect=expected)
        head = log.head()
    except CareloopError as exc:
        fail(str(exc))
        return
    if result.ok and head["seq"] == 0:
        fail("nothing to verify: the audit log holds no records (a service never called, or a log emptied: an "
             "earlier head given to --expect tells which)")
        return
    signed = result.checkpoints if key is not None else None
    doc = {"ok": result.ok, "checked": result.checked, "first_bad": result.first_bad, "reason": result.reason,
           "signed_checkpoints": signed,
           "head": f"{head['seq']}:{head['hash']}" + (f"@{iso_z(head['recorded'])}" if head["recorded"] else "")}
    if as_json:
        _print_json(doc)
    elif result.ok:
        out_console.print(f"audit log intact: {result.checked:,} records verified"
                          + (f", {signed:,} signed checkpoint{'s' * (signed != 1)} checked" if signed is not None
                             else "") + f"; head {doc['head']} (keep it: --expect checks it next time)",
                          soft_wrap=True)  # one line: the head is copied as it is
    else:
        out_console.print(f"[bold red]audit log altered[/]: first bad record {result.first_bad} ({result.reason})")
    if not result.ok:
        raise typer.Exit(code=1)


def _audit_head(text: str) -> tuple[int, str, dt.datetime | None] | None:
    """`SEQ:HASH@TIME` (TIME optional, as an empty log's head has none) as `AuditLog.verify(expect=...)` takes it;
    None when malformed."""
    m = re.fullmatch(r"(\d+):([0-9a-f]{64})(?:@(.+))?", text)
    if m is None:
        return None
    try:
        when = dt.datetime.fromisoformat(m[3].replace("Z", "+00:00")) if m[3] else None
    except ValueError:
        return None
    if when is not None and when.tzinfo is None:
        return None
    return int(m[1]), m[2], when


@audit_app.command("keygen")
def audit_keygen(
    out: Annotated[Path, typer.Option("--out", help="Private key file to write (PEM); the public key goes beside it "
                                                    "as NAME.pub.pem.")],
) -> None:
    """Make an Ed25519 key pair for signed audit checkpoints (the service config's audit.signing_key_file; give
    the public key to whoever runs `careloop audit verify --verify-key`)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    if out.exists():
        fail(f"{out} exists: refusing to overwrite a signing key")
        return
    key = Ed25519PrivateKey.generate()
    out.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # readable by the service's user only
    with os.fdopen(fd, "wb") as fh:
        fh.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()))
    public = out.with_name(out.name.removesuffix(".pem") + ".pub.pem")
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    out_console.print(f"wrote {out} (private, mode 600) and {public} (public)")


StateOption = Annotated[str, typer.Option("--state", help="State store URL (sqlite:///path or postgresql://...).")]
SinceOption = Annotated[str | None, typer.Option(help="From this time on (YYYY-MM-DD, midnight UTC, or an ISO "
                                                      "8601 date-time; UTC when no zone).")]
UntilOption = Annotated[str | None, typer.Option(help="Before this time (excluded; same forms as --since).")]
PatientOption = Annotated[str | None, typer.Option(help="Only this patient's records (FHIR id).")]
def _known_kind(kind: str | None) -> str | None:
    """An audit record kind the log writes (a misspelt one would read as an empty report, not as a mistake)."""
    from careloop.audit.event import KINDS

    if kind is not None and kind not in KINDS:
        raise typer.BadParameter(f"no audit record is of kind {kind!r:.40}: choose one of {', '.join(KINDS)}")
    return kind


KindOption = Annotated[str | None, typer.Option(help="Only this kind: cds-call, auth-failure, feedback, "
                                                     "admin-change, kill-switch, timeout, export, access.",
                                                callback=_known_kind)]
ClientOption = Annotated[str | None, typer.Option(help="Only this client (the EHR's JWT iss).")]
SortOption = Annotated[str, typer.Option(help="Sort by any recorded field (seq, recorded, kind, outcome, client, "
                                              "user, patient, score, ...); a leading - sorts descending.")]
ByOption = Annotated[str | None, typer.Option(help="Who is reading (recorded in the audit log; default: the "
                                                   "login name).")]


def _open_audit(state: str):
    from careloop.audit import AuditLog, missing_log

    missing = missing_log(state)
    if missing:
        raise CareloopError(f"no audit log: {missing}")
    return AuditLog.open(state)


def _reader(by: str | None) -> str:
    import getpass

    who = by if by is not None else getpass.getuser()
    if not re.fullmatch(r"[\x21-\x7e]{1,128}", who):
        raise CareloopError("--by: an identifier without spaces (a login name or a staff id)")
    return who


def _cut(text: str, most: int) -> str:
    return text if len(text) <= most else text[: most - 1] + "…"


def _bounds(since: str | None, until: str | None) -> tuple[dt.datetime | None, dt.datetime | None]:
    from careloop.audit.report import parse_bound

    start = parse_bound(since, "--since") if since else None
    end = parse_bound(until, "--until") if until else None
    if start is not None and end is not None and end <= start:
        raise CareloopError("--until must be later than --since")
    return start, end


def _written(path: Path, flag: str, *, overwrite: bool):
    """`WholeFile` for an output option: CareloopError naming the option and why, instead of an OSError."""
    from careloop.audit.report import WholeFile

    try:
        return WholeFile(path, overwrite=overwrite)
    except OSError as exc:
        raise CareloopError(f"{flag} {path}: cannot write it ({_why_not(exc, path)})") from None


def _commit(whole, flag: str) -> None:
    try:
        whole.commit()
    except FileExistsError:
        raise CareloopError(f"{flag} {whole.path} exists: refusing to overwrite an export") from None
    except OSError as exc:
        raise CareloopError(f"{flag} {whole.path}: cannot write it ({_why_not(exc, whole.path)})") from None


def _make_folder(path: Path, flag: str) -> None:
    """The folder of an output file, made if missing; CareloopError saying why it cannot be."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CareloopError(f"{flag} {path}: cannot make its folder ({_why_not(exc, path)})") from None


def _why_not(exc: OSError, path: Path) -> str:
    """Why `path` cannot be written, in words: the folder that is missing or is a file, or the system's reason."""
    if isinstance(exc, IsADirectoryError) and path.is_dir():
        return "it is a folder"
    if isinstance(exc, FileNotFoundError | NotADirectoryError | FileExistsError):
        for folder in path.parents:
            if folder.exists():
                if not folder.is_dir():
                    return f"{folder} is a file, not a folder"
                break
        if not path.parent.is_dir():
            return f"no folder {path.parent}"
    return exc.strerror or type(exc).__name__


@audit_app.command("report")
def audit_report(
    state: StateOption,
    since: SinceOption = None,
    until: UntilOption = None,
    patient: PatientOption = None,
    kind: KindOption = None,
    client: ClientOption = None,
    sort: SortOption = "seq",
    limit: Annotated[int | None, typer.Option(min=1, help="At most this many records (after sorting).")] = None,
    csv_out: Annotated[Path | None, typer.Option("--csv", help="Write every field of every record to this CSV "
                                                               "file instead of printing a table.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print every field of every record as JSON.")] = False,
    by: ByOption = None,
) -> None:
    """The audit report (ONC 170.315(d)(3)): the records of a time range, for a patient, kind or client, sorted by
    any field. The reading is itself audited."""
    from careloop.audit.report import COLUMNS, SCREEN, SCREEN_WIDTHS, audit_the_reading, flat, write_csv

    try:
        who = _reader(by)
        with _open_audit(state) as log:
            recs = log.records(*_bounds(since, until), patient, sort, kind=kind, client=client, limit=limit)
            if csv_out is None:
                audit_the_reading(log, "audit-report", recs, who, "json" if as_json else "table")
            else:  # the file appears whole, once the reading is audited, or not at all
                with _written(csv_out, "--csv", overwrite=True) as whole:
                    write_csv(recs, whole.file)
                    audit_the_reading(log, "audit-report", recs, who, "csv")
                    _commit(whole, "--csv")
    except CareloopError as exc:
        fail(str(exc))
        return
    except OSError as exc:  # while writing (a full disk): the partial file is gone
        fail(f"--csv {csv_out}: cannot write it ({exc.strerror or type(exc).__name__})")
        return
    if as_json:
        _print_json({"count": len(recs), "columns": list(COLUMNS), "records": [flat(r) for r in recs]})
        return
    if csv_out is not None:
        out_console.print(f"wrote {len(recs):,} records to {csv_out}")
        return
    table = Table(title=f"audit log: {len(recs):,} records (every field: --csv or --json)", title_justify="left")
    for c in SCREEN:
        table.add_column(c, no_wrap=True, justify="right" if c in ("seq", "score") else "left")
    width = {c: len(c) for c in SCREEN}
    for r in recs:
        row = flat(r)
        row["recorded"] = row["recorded"][:19].replace("T", " ") if row["recorded"] else None
        row["score"] = f"{row['score']:.3f}" if isinstance(row["score"], float) else row["score"]
        row["cards"] = " ".join(c.rsplit("|", 1)[-1] for c in r["cards"]) or None  # the indicators
        cells = [_cut("" if row[c] is None else str(row[c]), SCREEN_WIDTHS[c]) for c in SCREEN]
        width.update({c: max(width[c], len(x)) for c, x in zip(SCREEN, cells, strict=True)})
        table.add_row(*cells)
    # as wide as its cells (values are cut to SCREEN_WIDTHS): a narrow terminal wraps lines, never drops a column
    Console(width=max(out_console.width, sum(w + 3 for w in width.values()) + 1)).print(table)


@audit_app.command("export")
def audit_export(
    state: StateOption,
    out: Annotated[Path, typer.Option("--out", "-o", help="The FHIR Bundle (JSON) to write.")],
    since: SinceOption = None,
    until: UntilOption = None,
    patient: PatientOption = None,
    kind: KindOption = None,
    client: ClientOption = None,
    sort: SortOption = "seq",
    by: ByOption = None,
) -> None:
    """Export the selected records as a FHIR R4 Bundle of AuditEvents, each carrying its place in the hash chain,
    so that `careloop audit check-export` re-checks them away from the database. The export is itself audited."""
    import orjson

    from careloop.audit import summarize
    from careloop.audit.report import audit_the_reading

    if out.exists():
        fail(f"{out} exists: refusing to overwrite an export")
        return
    try:
        who = _reader(by)
        with _open_audit(state) as log:
            bundle = log.export_bundle(*_bounds(since, until), patient, sort, kind=kind, client=client)
            _make_folder(out, "--out")
            with _written(out, "--out", overwrite=False) as whole:  # whole, once the reading is audited, or not
                whole.file.write(orjson.dumps(bundle, option=orjson.OPT_INDENT_2))
                audit_the_reading(log, "audit-export", [summarize(e["resource"]) for e in bundle["entry"]], who,
                                  "fhir-bundle")
                _commit(whole, "--out")
    except CareloopError as exc:
        fail(str(exc))
        return
    except OSError as exc:  # while writing (a full disk): the partial file is gone
        fail(f"--out {out}: cannot write it ({exc.strerror or type(exc).__name__})")
        return
    out_console.print(f"wrote {len(bundle['entry']):,} AuditEvents to {out} (FHIR Bundle, type collection)")


@audit_app.command("check-export")
def audit_check_export(
    bundle: Annotated[Path, typer.Argument(help="A Bundle written by `careloop audit export`.")],
    no_completeness: Annotated[bool, typer.Option(
        "--no-completeness", help="Accept an export that does not say how many records it holds and the log's head "
        "(one made before careloop wrote that, or whose Bundle meta was removed): only its records and the links "
        "between them are checked, so a record removed from it goes unseen. Without it such an export fails.")
    ] = False,
    expect: Annotated[str | None, typer.Option(
        "--expect", help="SEQ:HASH (or SEQ:HASH@TIME as `careloop audit verify` prints it), a head kept outside the "
        "database: the export must hold that record with that hash, which exposes a rewritten or cut export.")
    ] = None,
) -> None:
    """Re-check an exported Bundle: every record against its hash, the links between consecutive records and,
    from what the export says of itself, that no record was removed; exit 1 and name the first bad one. Gaps in
    seq are listed (a filtered export has them; in an export of the whole log they are removals)."""
    import orjson

    from careloop.audit import AuditLog
    from careloop.audit.log import UNCHECKED_COMPLETENESS

    expected = _audit_head(expect) if expect is not None else None
    if expect is not None and expected is None:
        fail("--expect must be SEQ:HASH (or SEQ:HASH@TIME) as `careloop audit verify` prints it (a number, a "
             "colon, 64 hex digits)")
        return
    try:
        doc = orjson.loads(bundle.read_bytes())
    except OSError as exc:
        fail(f"{bundle}: cannot read it ({exc.strerror or exc})")
        return
    except orjson.JSONDecodeError:
        fail(f"{bundle}: not JSON")
        return
    if not isinstance(doc, dict) or doc.get("resourceType") != "Bundle":
        fail(f"{bundle}: not a FHIR Bundle")
        return
    result = AuditLog.verify_bundle(doc, completeness=not no_completeness,
                                    expect=expected[:2] if expected is not None else None)
    shown = 10
    for a, b in result.gaps[:shown]:
        out_console.print(f"records between {a} and {b} are missing or the export was filtered")
    if len(result.gaps) > shown:
        out_console.print(f"... and {len(result.gaps) - shown:,} more gaps in seq")
    if result.ok:
        out_console.print(f"export intact: {result.checked:,} records match their hashes and links"
                          + ("; completeness not checked (--no-completeness): a removed record goes unseen"
                             if no_completeness else "")
                          + (f"; it holds record {expected[0]}, the head given to --expect" if expected else ""),
                          soft_wrap=True)
        return
    if result.reason == UNCHECKED_COMPLETENESS:
        out_console.print(f"[bold red]export completeness unknown[/]: {result.reason}; --no-completeness checks "
                          "only the records it holds", soft_wrap=True)
    else:
        out_console.print(f"[bold red]export altered[/]: {result.reason}", soft_wrap=True)
    raise typer.Exit(code=1)


@audit_app.command("purge")
def audit_purge(
    state: StateOption,
    before: Annotated[str, typer.Option(help="Delete records recorded before this time (at least 183 days ago).")],
    by: Annotated[str, typer.Option(help="Who runs the retention job (recorded in the anchor and the log).")],
    minimum_days: Annotated[int, typer.Option(help="The retention period in days (at least 183: EU AI Act Arts "
                                                   "19, 26(6)).")] = 183,
) -> None:
    """Retention: delete the oldest records recorded before --before, leaving a signed-off anchor from which the
    rest of the chain still verifies. Refuses anything younger than the retention period."""
    from careloop.audit.report import parse_bound
    from careloop.state import iso_z

    try:
        who = _reader(by)
        cut = parse_bound(before, "--before")
        with _open_audit(state) as log:
            deleted = log.purge(cut, minimum_days=minimum_days, by=who)
            head = log.head()
    except CareloopError as exc:
        fail(str(exc))
        return
    out_console.print(f"purged {deleted:,} records recorded before {iso_z(cut)}; the log now holds "
                      f"records up to seq {head['seq']:,}")


deferral_app = typer.Typer(help="Learned deferral between the model and the clinician (CoDoC and an alternative).",
                           no_args_is_help=True)
app.add_typer(deferral_app, name="deferral")


def _table(path: Path, flag: str):
    from careloop.workflows._data import read_table

    return read_table(path, flag=flag).to_pandas()


@deferral_app.command("fit")
def deferral_fit(
    tune: Annotated[Path, typer.Option(help="Tuning table (.csv/.parquet): score, clinician opinion, truth.")],
    val: Annotated[Path, typer.Option(help="Validation table: model selection only.")],
    score: Annotated[str, typer.Option(help="Score column (probabilities in [0, 1]).")],
    clinician: Annotated[str, typer.Option(help="Clinician opinion column: 0/1, or a probability (cut at 0.5).")],
    label: Annotated[str, typer.Option(help="Truth column (0/1).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Policy JSON to write.")],
    transform: Annotated[str | None, typer.Option(help="Declared score transform: logistic (log-odds) or rank.")]
    = None,
    seed: Annotated[int, typer.Option(help="Seed of the validation bootstrap.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the policy summary as JSON.")] = False,
) -> None:
    """Fit deferral policies on --tune, choose on --val (sensitivity non-inferior to the clinician, specificity
    above), and write the chosen policy with its hash."""
    from careloop.deferral import fit_policy

    _writable(out, "--out")
    try:
        policy = fit_policy(_table(tune, "--tune"), _table(val, "--val"), score=score, clinician=clinician,
                            label=label, seed=seed, score_transform=transform)
    except (CareloopError, ValueError) as exc:
        fail(str(exc).splitlines()[0])
        return
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(policy.to_json())
    except OSError as exc:
        _write_failed(exc, out, "--out")
        return
    d = policy.to_dict()
    summary = {"policy": str(out), "learner": d["learner"], "hash": policy.hash, "theta": d["theta"],
               "intervals": d["intervals"], "reason": d["selection"].get("reason")}
    if as_json:
        _print_json(summary)
    else:
        out_console.print(f"{d['learner']} policy {policy.hash[:12]}: defer scores in {d['intervals']} "
                          f"(AI threshold {d['theta']:.3f}) -> {out}", highlight=False)


@deferral_app.command("evaluate")
def deferral_evaluate(
    policy: Annotated[Path, typer.Option(help="Policy JSON from `careloop deferral fit`.")],
    table: Annotated[Path, typer.Option(help="Held-out table (test set): touched once.")],
    score: Annotated[str, typer.Option(help="Score column.")],
    clinician: Annotated[str, typer.Option(help="Clinician opinion column.")],
    label: Annotated[str, typer.Option(help="Truth column.")],
    cluster: Annotated[str | None, typer.Option(help="Patient id column for a cluster bootstrap.")] = None,
    n_boot: Annotated[int, typer.Option("--n-boot", help="Bootstrap resamples.")] = 1000,
    seed: Annotated[int, typer.Option(help="Seed.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the team evaluation as one JSON object.")] = False,
) -> None:
    """Team against clinician alone and AI alone, with paired bootstrap 95% intervals and the deferral rate."""
    from careloop.deferral import DeferralPolicy, table_columns, team_evaluation

    try:
        pol = DeferralPolicy.from_json(policy.read_text()) if policy.is_file() else None
        if pol is None:
            raise CareloopError(f"--policy: {policy} does not exist")
        df = _table(table, "--table")
        s, c, y = table_columns(df, score=score, clinician=clinician, label=label, name=table.name)
        clusters = None
        if cluster:
            if cluster not in df:
                raise CareloopError(f"--cluster: no column {cluster!r} in {table.name}")
            clusters = df[cluster].astype(str).to_numpy()
        result = team_evaluation(pol, s, c, y, clusters=clusters, n_boot=n_boot, seed=seed)
    except (CareloopError, ValueError) as exc:
        fail(str(exc).splitlines()[0])
        return
    flat = {k: (v["estimate"] if isinstance(v, dict) and "estimate" in v else v) for k, v in result.items()
            if k in ("sensitivity", "specificity", "deferral_rate", "ppv")}
    for who in ("clinician_alone", "ai_alone"):
        flat[who] = {k: result[who][k]["estimate"] for k in ("sensitivity", "specificity", "deferral_rate", "ppv")
                     if k in result[who]}
    doc = {**flat, "detail": result}
    if as_json:
        _print_json(doc)
        return
    t = Table(title=f"Clinician and AI as a team: {table.name}")
    for col in ("", "sensitivity", "specificity", "PPV", "deferral rate"):
        t.add_column(col, justify="left" if not col else "right")
    for name, block in (("team", result), ("clinician alone", result["clinician_alone"]),
                        ("AI alone", result["ai_alone"])):
        t.add_row(name, _fmt(block.get("sensitivity"), True), _fmt(block.get("specificity"), True),
                  _fmt(block.get("ppv"), True), _fmt(block.get("deferral_rate"), True))
    out_console.print(t)


@app.command()
def evaluate(
    table: Annotated[Path, typer.Option(help="Cases (.csv/.parquet) with one or more score columns and the truth.")],
    score: Annotated[list[str], typer.Option("--score", help="Score column (repeatable): e.g. several products.")],
    label: Annotated[str, typer.Option(help="Truth column.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for report.html/json, model card, HTI-1.")],
    positive: Annotated[str | None, typer.Option(help="Label value that counts as the outcome (default 1/true).")]
    = None,
    group: Annotated[list[str] | None, typer.Option("--group", help="Group attribute for fairness (repeatable).")]
    = None,
    id_col: Annotated[str | None, typer.Option("--id", help="Patient id column (cluster bootstrap).")] = None,
    policy: Annotated[str, typer.Option(help="Operating point policy: budget, ppv, sensitivity or threshold.")]
    = "budget",
    target: Annotated[float, typer.Option(help="Policy target.")] = 0.10,
    n_boot: Annotated[int, typer.Option("--n-boot", help="Bootstrap resamples.")] = 1000,
    documentation: Annotated[Path | None, typer.Option(help="YAML of the facts people supply.")] = None,
    seed: Annotated[int, typer.Option(help="Seed.")] = 0,
) -> None:
    """Local validation of any model's scores (e.g. third-party products) on the hospital's own cases: the same
    report as for careloop's own models, the scores side by side."""
    from careloop.workflows.scores import evaluate_scores

    _writable(out, "--out", folder=True)
    try:
        paths = evaluate_scores(table, scores=list(score), label=label, positive=positive, groups=list(group or []),
                                id_col=id_col, out=out, policy=policy, target=target, n_boot=n_boot,
                                documentation=documentation, seed=seed)
    except (CareloopError, ValueError) as exc:
        fail(str(exc).splitlines()[0])
        return
    out_console.print(f"report: {paths['report.html']}")


@app.command()
def monitor(
    model: Annotated[Path, typer.Option("--model", "-m", help="Model bundle directory.")],
    store: Annotated[Path, typer.Option("--store", "-s", help="Event store with the stays after go-live.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for monitor.json and monitor.html.")],
    period: Annotated[str, typer.Option(help="Period length: week, month, quarter or year.")] = "month",
    config: Annotated[Path | None, typer.Option(help="YAML of alert thresholds (PSI, performance, burden).")] = None,
    state: Annotated[str | None, typer.Option(help="The service's state store URL: alert burden from its audit log "
                                                   "and feedback.")] = None,
    start: Annotated[str | None, typer.Option(help="First day to report (YYYY-MM-DD; default: the first period "
                                              "after the model's development data, when the store has data after "
                                              "it, else the start of the store's data).")] = None,
    end: Annotated[str | None, typer.Option(help="Day after the last to report (default: the end of the store's "
                                            "data).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Drift of inputs and output against the training reference stored in the bundle, performance as labels
    mature (with CIs), subgroups and alert burden, period by period; alerts with their reasons; monitor.json and an
    HTML report with charts. The store may be the training store or another hospital's."""
    from careloop.monitor.cli import run_monitor

    try:
        summary = run_monitor(model, store, out, period, config, state, start=_date(start, "--start"),
                              end=_date(end, "--end"))
    except (CareloopError, ValueError) as exc:
        fail(str(exc).splitlines()[0])
        return
    if as_json:
        _print_json(summary)
        return
    alerts = summary.get("alert_list") or []
    t = Table(title=f"Monitoring {model.name}: {len(alerts)} alert(s)")
    for col in ("period", "kind", "concerns", "metric", "severity", "value"):
        t.add_column(col)
    for a in alerts[:40]:
        v = a.get("value")
        t.add_row(str(a["period"])[:10], a["kind"], str(a.get("concerns") or "-"), str(a["metric"]),
                  str(a["severity"]), f"{v:.3f}" if isinstance(v, float) else str(v))
    out_console.print(t)
    out_console.print(f"monitor: {summary['json']}, {summary['html']}")

if __name__ == "__main__":
    app()
