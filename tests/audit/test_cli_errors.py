"""`careloop audit ...` on bad input: a state URL that does not parse or names a driver careloop does not install, an
output file that cannot be written, a time bound out of range. Each gets one clear line and exit 2, never a
traceback, never the database password; no report or export is left half-written, and none is left unaudited."""

from __future__ import annotations

import csv
import errno
import json

import pytest
from typer.testing import CliRunner

from careloop.audit import AuditError, AuditLog
from careloop.audit.report import parse_bound
from careloop.cli import app as cli
from tests.audit.helpers import make_events

PASSWORD = "Secr3tPw"
BAD_URLS = [
    (f"postgresql://careloop:{PASSWORD}@db.example.org:notaport/careloop", "does not parse"),
    (f"postgresql://careloop:{PASSWORD}@db.example.org:70000/careloop", "port 70000 is not between 1 and 65535"),
    (f"postgresql+asyncpg://careloop:{PASSWORD}@db.example.org/careloop", "unsupported database driver"),
    (f"postgresql+psycopg2://careloop:{PASSWORD}@db.example.org/careloop", "unsupported database driver"),
    (f"postgresql+pg8000://careloop:{PASSWORD}@db.example.org/careloop", "unsupported database driver"),
    (f"postgres+pg8000://careloop:{PASSWORD}@db.example.org/careloop", "unsupported database driver"),
]


@pytest.fixture
def url(db_url):
    with AuditLog.open(db_url) as log:
        log.append_many(make_events(12))
    return db_url


@pytest.fixture
def outdir(tmp_path):
    """A folder for the outputs alone (a SQLite state database lives in tmp_path)."""
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


def run(*args: str):
    return CliRunner().invoke(cli, ["audit", *args], env={"COLUMNS": "240"})


def one_error_line(res, why: str) -> None:
    assert res.exit_code == 2, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and why in lines[0], res.output


def _exports(url: str) -> list[dict]:
    with AuditLog.open(url) as log:
        return log.records(kind="export")


# -- state URLs -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("state", "why"), BAD_URLS)
@pytest.mark.parametrize("command", [
    ["verify"], ["report"], ["export", "--out", "{tmp}/e.json"], ["purge", "--before", "2020-01-01", "--by", "dpo"],
])
def test_a_state_url_that_cannot_be_opened_is_one_line_without_the_password(tmp_path, command, state, why):
    args = [a.replace("{tmp}", str(tmp_path)) for a in command]
    res = run(*args, "--state", state)
    one_error_line(res, why)
    assert PASSWORD not in res.output
    assert not (tmp_path / "e.json").exists()


def test_a_state_url_error_names_no_password_even_when_it_does_not_parse():
    res = run("report", "--state", f"postgresql://careloop:{PASSWORD}@db:5432x/careloop")
    one_error_line(res, "state store URL postgresql://... does not parse")
    assert PASSWORD not in res.output and "careloop:" not in res.output


# -- output files ---------------------------------------------------------------------------------------------------


def test_a_csv_report_into_a_missing_folder_is_one_line_and_not_audited(url, outdir):
    out = outdir / "nodir" / "r.csv"
    one_error_line(run("report", "--state", url, "--csv", str(out), "--by", "gov"), f"--csv {out}: cannot write it "
                   f"(no folder {out.parent})")
    assert not out.parent.exists() and _exports(url) == []


def test_a_csv_report_onto_a_folder_is_one_line(url, outdir):
    one_error_line(run("report", "--state", url, "--csv", str(outdir), "--by", "gov"), "it is a folder")
    assert _exports(url) == [] and list(outdir.iterdir()) == []


def test_an_export_under_a_file_is_one_line_and_writes_nothing(url, outdir):
    (outdir / "afile").write_text("keep me")
    for out in (outdir / "afile" / "x.json", outdir / "afile" / "sub" / "x.json"):
        one_error_line(run("export", "--state", url, "--out", str(out), "--by", "gov"),
                       f"--out {out}: cannot make its folder ({outdir / 'afile'} is a file, not a folder)")
    assert (outdir / "afile").read_text() == "keep me"
    assert sorted(p.name for p in outdir.iterdir()) == ["afile"] and _exports(url) == []


def test_an_export_still_makes_missing_folders(url, outdir):
    out = outdir / "a" / "b" / "export.json"
    res = run("export", "--state", url, "--out", str(out), "--by", "gov")
    assert res.exit_code == 0, res.output
    assert len(json.loads(out.read_text())["entry"]) == 12
    assert sorted(p.name for p in out.parent.iterdir()) == ["export.json"]  # no temporary file left beside it


@pytest.mark.parametrize("command", ["report", "export"])
def test_a_write_that_fails_half_way_leaves_no_file_and_no_audit_record(url, outdir, monkeypatch, command):
    import careloop.audit.report as report
    from careloop.audit.report import WholeFile

    out = outdir / ("r.csv" if command == "report" else "e.json")

    def full_disk(records, file):
        file.write(b"seq,recorded,kind\n1,")
        raise OSError(errno.ENOSPC, "No space left on device")

    class FullFile(WholeFile):  # the export writes its bytes itself: the disk fills after a few of them
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            real = self.file

            class Full:
                def write(self, data):
                    real.write(data[:20])
                    raise OSError(errno.ENOSPC, "No space left on device")

                def close(self):
                    real.close()

            self.file = Full()

    monkeypatch.setattr(report, "write_csv", full_disk)
    monkeypatch.setattr(report, "WholeFile", FullFile if command == "export" else WholeFile)
    flag = "--csv" if command == "report" else "--out"
    one_error_line(run(command, "--state", url, flag, str(out), "--by", "gov"), "No space left on device")
    assert list(outdir.iterdir()) == [] and _exports(url) == []


@pytest.mark.parametrize("command", ["report", "export"])
def test_an_output_appears_only_once_its_reading_is_audited(url, outdir, monkeypatch, command):
    import careloop.audit.report as report

    def refused(*args, **kwargs):
        raise AuditError("the database refused the append")

    monkeypatch.setattr(report, "audit_the_reading", refused)
    out = outdir / ("r.csv" if command == "report" else "e.json")
    flag = "--csv" if command == "report" else "--out"
    one_error_line(run(command, "--state", url, flag, str(out), "--by", "gov"), "the database refused the append")
    assert list(outdir.iterdir()) == []


def test_a_csv_report_replaces_an_earlier_one_whole(url, outdir):
    out = outdir / "r.csv"
    out.write_text("an earlier report\n")
    res = run("report", "--state", url, "--csv", str(out), "--by", "gov")
    assert res.exit_code == 0, res.output
    assert len(list(csv.DictReader(out.open()))) == 12
    assert sorted(p.name for p in outdir.iterdir()) == ["r.csv"]


def test_whole_file_never_overwrites_when_told_not_to(tmp_path):
    from careloop.audit.report import WholeFile

    out = tmp_path / "e.json"
    with WholeFile(out, overwrite=False) as whole:
        whole.file.write(b"new")
        out.write_text("made meanwhile")  # someone else's file appears before the export is moved into place
        with pytest.raises(FileExistsError):
            whole.commit()
    assert out.read_text() == "made meanwhile" and sorted(p.name for p in tmp_path.iterdir()) == ["e.json"]


# -- time bounds ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-05:00"])
def test_a_bound_out_of_range_in_utc_is_an_audit_error(text):
    with pytest.raises(AuditError, match=r"--since: .* is out of range once converted to UTC"):
        parse_bound(text, "--since")


@pytest.mark.parametrize("args", [
    ["report", "--since", "0001-01-01T00:00:00+01:00"],
    ["report", "--until", "9999-12-31T23:59:59-05:00"],
    ["export", "--out", "{tmp}/e.json", "--since", "0001-01-01T00:00:00+01:00"],
    ["purge", "--before", "0001-01-01T00:00:00+01:00", "--by", "dpo"],
])
def test_a_bound_out_of_range_is_one_line(url, outdir, args):
    flag = next(a for a in args if a in ("--since", "--until", "--before"))
    res = run(*[a.replace("{tmp}", str(outdir)) for a in args], "--state", url)
    one_error_line(res, f"{flag}: ")
    assert "out of range once converted to UTC" in res.output
    assert not (outdir / "e.json").exists() and _exports(url) == []


def test_a_writer_lock_this_user_cannot_open_is_named_in_one_line(tmp_path):
    """The service makes the SQLite store's writer lock (mode 0600); an auditor running the CLI as another user could
    not open it, and got a traceback from verify and "--csv None: cannot write it" from report. A folder in the lock's
    place stands for a file this user may not open (the tests run as root, whom permissions do not stop)."""
    db = tmp_path / "state.db"
    with AuditLog.open(f"sqlite:///{db}") as log:
        log.append_many(make_events(3))
    lock = tmp_path / "state.db.writer-lock"
    lock.unlink()
    lock.mkdir()
    for args in (["verify"], ["report", "--by", "auditor"]):
        res = run(*args, "--state", f"sqlite:///{db}")
        assert res.exit_code == 2, res.output
        assert "writer lock" in res.output and "state.db.writer-lock" in res.output.replace("\n", "")
        assert "Traceback" not in res.output and "--csv" not in res.output


@pytest.mark.parametrize("name", ["ward#3.db", "50%41 off.db", "what?.db", "100%.db"])
def test_verify_finds_a_sqlite_log_whose_path_holds_uri_characters(tmp_path, name):
    """missing_log opens the file read-only through an SQLite URI: '#', '?', '%' and spaces in its path are the
    file's name (not a fragment, a query or an escape), and nothing else is created beside it."""
    from urllib.parse import quote

    from careloop.audit import missing_log

    path = tmp_path / name
    url = f"sqlite:///{quote(str(path))}"  # the URL names the file exactly (SQLAlchemy decodes its path)
    with AuditLog.open(url) as log:
        log.append_many(make_events(3))
    assert path.is_file()
    def files() -> list[str]:  # (reading a WAL database makes its -wal and -shm files: not strays)
        return sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(("-wal", "-shm")))

    before = files()
    assert missing_log(url) is None
    assert files() == before
    res = run("verify", "--state", url)
    assert res.exit_code == 0 and "audit log intact: 3 records verified" in res.output, res.output
