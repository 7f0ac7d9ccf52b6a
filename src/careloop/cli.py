"""The `careloop` command line: one command per stage of the loop."""

from __future__ import annotations

import datetime as dt
import os
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


@app.command()
def synth(
    patients: Annotated[int, typer.Option("--patients", "-n", help="Number of patients to generate.")] = 5000,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives byte-identical output.")] = 0,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory.")] = Path("hospital"),
    workers: Annotated[int, typer.Option(help="Worker processes (output does not depend on it).")] = os.cpu_count() or 1,
    start: Annotated[str | None, typer.Option(help="First day of the data window (YYYY-MM-DD).")] = None,
    end: Annotated[str | None, typer.Option(help="Day after the last day of the window (YYYY-MM-DD).")] = None,
    drift: Annotated[bool, typer.Option("--drift", help="From the drift date: creatinine assay shift, ICD-10 "
                                        "coding change, older and sicker new patients.")] = False,
    drift_date: Annotated[str | None, typer.Option(help="Drift date (default: two thirds into the window).")] = None,
    bias: Annotated[bool, typer.Option("--bias", help="A subgroup's chronic conditions are under-recorded.")] = False,
    bias_group: Annotated[str | None, typer.Option(help="Group for --bias, e.g. race:black (the default), "
                                                   "ethnicity:hispanic, language:es, payer:medicaid.")] = None,
    scenario: Annotated[list[str] | None, typer.Option(help="Scenario by name (drift, bias); repeatable.")] = None,
    bundle_format: Annotated[str, typer.Option(help="Bundle files as json or json.gz.")] = "json.gz",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a hospital already in --out.")] = False,
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
            overwrite=overwrite,
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
        import orjson

        sys.stdout.write(orjson.dumps(result.to_json(), option=orjson.OPT_INDENT_2).decode() + "\n")
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


if __name__ == "__main__":
    app()
