"""A user's mistake on the command line stops with one line on stderr and exit code 2, before any heavy work."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from careloop.cli import app

runner = CliRunner()


def _one_line_error(result, *words: str) -> str:
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def _outputs(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """Output paths that cannot be written, and the reason each gives."""
    (tmp_path / "adir").mkdir()
    (tmp_path / "afile").write_text("x")
    return {"folder": (tmp_path / "adir", "it is a folder"),
            "under a file": (tmp_path / "afile" / "c.parquet", f"{tmp_path / 'afile'} is a file, not a folder")}


def _commands(tmp_path: Path, out: Path) -> dict[str, list[str]]:
    """Each command with an unwritable output and otherwise inputs that do not exist: the output is checked first."""
    missing = str(tmp_path / "missing")
    return {
        "cohort": ["cohort", "--task", "readmission-30d", "--store", missing, "--out", str(out)],
        "features": ["features", "--cohort", missing, "--store", missing, "--out", str(out)],
        "predict": ["predict", "--model", missing, "--store", missing, "--out", str(out)],
        "deferral fit": ["deferral", "fit", "--tune", missing, "--val", missing, "--score", "s", "--clinician", "c",
                         "--label", "y", "--out", str(out)],
    }


@pytest.mark.parametrize("kind", ["folder", "under a file"])
@pytest.mark.parametrize("command", ["cohort", "features", "predict", "deferral fit"])
def test_an_output_file_that_cannot_be_written_is_one_line_before_any_work(tmp_path: Path, command: str,
                                                                           kind: str):
    out, reason = _outputs(tmp_path)[kind]
    result = runner.invoke(app, _commands(tmp_path, out)[command])
    _one_line_error(result, f"--out {out}: cannot write it ({reason})")


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc")
def test_a_folder_no_file_can_be_made_in_is_named():
    result = runner.invoke(app, ["cohort", "--task", "readmission-30d", "--store", "nowhere", "--out",
                                 "/proc/c.parquet"])
    _one_line_error(result, "--out /proc/c.parquet: cannot write it (cannot create a file in /proc")


def test_an_output_folder_that_cannot_be_made_is_one_line(tmp_path: Path):
    (tmp_path / "afile").write_text("x")
    afile, missing = tmp_path / "afile", str(tmp_path / "missing")
    result = runner.invoke(app, ["evaluate", "--table", missing, "--score", "s", "--label", "y", "--out", str(afile)])
    _one_line_error(result, f"--out {afile}: cannot write it (it is a file, not a folder)")
    result = runner.invoke(app, ["train", "--registry", str(afile), "--table", missing, "--label", "y", "--id", "p"])
    _one_line_error(result, f"--registry {afile}: cannot write it (it is a file, not a folder)")
    src = tmp_path / "ndjson"
    src.mkdir()
    result = runner.invoke(app, ["ingest", str(src), "--store", str(afile / "st")])
    _one_line_error(result, f"--store {afile / 'st'}: cannot write it ({afile} is a file, not a folder)")


def test_an_output_in_folders_yet_to_be_made_passes_the_check_and_nothing_is_left(tmp_path: Path):
    out = tmp_path / "new" / "sub" / "c.parquet"
    result = runner.invoke(app, ["cohort", "--task", "readmission-30d", "--store", str(tmp_path / "missing"),
                                 "--out", str(out)])
    _one_line_error(result, "is not a careloop event store")
    assert not (tmp_path / "new").exists()
    kept = tmp_path / "kept.parquet"
    kept.write_bytes(b"old")
    result = runner.invoke(app, ["cohort", "--task", "readmission-30d", "--store", str(tmp_path / "missing"),
                                 "--out", str(kept)])
    _one_line_error(result, "is not a careloop event store")
    assert kept.read_bytes() == b"old"


@pytest.mark.parametrize("kind", ["empty", "csv", "folder", "not a cohort"])
def test_a_cohort_that_is_not_a_parquet_cohort_file_is_one_line(tmp_path: Path, kind: str):
    import pyarrow as pa
    import pyarrow.parquet as pq

    cohort = tmp_path / "c.parquet"
    if kind == "empty":
        cohort.write_bytes(b"")
    elif kind == "csv":
        cohort.write_text("encounter_id,index_time\ne1,2024-01-01\n")
    elif kind == "folder":
        cohort.mkdir()
    else:
        pq.write_table(pa.table({"encounter_id": ["e1"], "score": [0.5]}), cohort)
    result = runner.invoke(app, ["features", "--cohort", str(cohort), "--store", str(tmp_path / "missing"),
                                 "--out", str(tmp_path / "f.parquet")])
    _one_line_error(result, f"--cohort {cohort}: not a Parquet cohort file (")
    assert not (tmp_path / "f.parquet").exists()


def _cases(path: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"encounter_id": ["e1", "e2"], "s": [0.2, 0.7], "c": [0, 1], "y": [0, 1]}), path)
    return path


@pytest.mark.parametrize("flag", ["--tune", "--val"])
def test_deferral_fit_names_the_table_that_does_not_exist(tmp_path: Path, flag: str):
    good, nosuch = _cases(tmp_path / "cases.parquet"), tmp_path / "nosuch.csv"
    files = {"--tune": good, "--val": good} | {flag: nosuch}
    result = runner.invoke(app, ["deferral", "fit", "--tune", str(files["--tune"]), "--val", str(files["--val"]),
                                 "--score", "s", "--clinician", "c", "--label", "y", "--out",
                                 str(tmp_path / "p.json")])
    _one_line_error(result, f"{flag}: {nosuch} does not exist")


def test_train_checks_the_clinician_table_before_training_and_names_it(tmp_path: Path):
    cases = _cases(tmp_path / "cases.parquet")
    common = ["train", "--registry", str(tmp_path / "reg"), "--table", str(cases), "--label", "y", "--id",
              "encounter_id", "--documentation", str(tmp_path / "doc.yaml")]
    nosuch = tmp_path / "nosuch.parquet"
    _one_line_error(runner.invoke(app, [*common, "--clinician", str(nosuch)]), f"--clinician: {nosuch} does not exist")
    notes = tmp_path / "notes.txt"
    notes.write_text("x")
    _one_line_error(runner.invoke(app, [*common, "--clinician", str(notes)]),
                    "--clinician: notes.txt is neither .csv, .tsv nor .parquet")
    _one_line_error(runner.invoke(app, [*common, "--clinician", str(cases)]),
                    "--clinician: no column 'clinician_risk_30d' in cases.parquet")
    assert not (tmp_path / "reg").exists()


def test_read_table_errors_name_the_option_that_gave_the_file(tmp_path: Path):
    from careloop.workflows._data import DataError, read_table

    with pytest.raises(DataError, match=r"^--clinician: .*nosuch\.parquet does not exist"):
        read_table(tmp_path / "nosuch.parquet", flag="--clinician")
    with pytest.raises(DataError, match=r"^--table: "):
        read_table(tmp_path / "nosuch.parquet")
