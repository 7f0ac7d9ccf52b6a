"""Bundles: the id is the content hash, recomputed here; any change after registration is refused."""

import hashlib
import json
import os
import shutil
import stat

import pytest
from typer.testing import CliRunner

from careloop.cli import app
from careloop.registry import MANIFEST, BundleIntegrityError, Registry, RegistryError, load, verify


def _staging(tmp_path, name="stage", text="v1"):
    d = tmp_path / name
    (d / "sub").mkdir(parents=True)
    (d / "model.json").write_text(json.dumps({"w": text}))
    (d / "report.html").write_text("<html>report</html>")
    (d / "sub" / "extra.txt").write_text("nested")
    (d / "sub" / MANIFEST).write_text('{"note": "a nested file that happens to share the name"}')
    (d / "bundle.json").write_text(json.dumps({"task": "t", "metrics": {"auroc": 0.8}}))
    return d


def _independent_id(folder):
    lines = []
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if p.is_file() and rel != MANIFEST:  # only the top-level manifest is left out
            lines.append((rel, hashlib.sha256(p.read_bytes()).hexdigest()))
    return hashlib.sha256("".join(f"{r} {h}\n" for r, h in sorted(lines)).encode()).hexdigest()


def test_register_names_the_bundle_by_its_content_hash(tmp_path):
    stage = _staging(tmp_path)
    expect = _independent_id(stage)
    b = Registry(tmp_path / "reg").register(stage, "readmission")
    assert b.bundle_id == expect
    assert b.path.name == f"readmission-{expect[:12]}"
    assert not stage.exists()
    assert verify(b.path).bundle_id == expect
    mode = os.stat(b.path / "model.json").st_mode
    assert not mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)


def test_identical_content_registers_once(tmp_path):
    reg = Registry(tmp_path / "reg")
    a = reg.register(_staging(tmp_path, "s1"), "m")
    b = reg.register(_staging(tmp_path, "s2"), "m")
    assert a.path == b.path and len(reg.bundles()) == 1
    c = reg.register(_staging(tmp_path, "s3", text="v2"), "m")
    assert c.bundle_id != a.bundle_id and len(reg.bundles()) == 2


@pytest.mark.parametrize("tamper, message", [
    (lambda d: (d / "model.json").write_text('{"w": "evil"}'), "model.json was modified"),
    (lambda d: (d / "sub" / "extra.txt").unlink(), "sub/extra.txt is missing"),
    (lambda d: (d / "new.txt").write_text("x"), "new.txt was added"),
    (lambda d: (d / "report.html").write_bytes(b"<html>report</html> "), "report.html was modified"),
    (lambda d: (d / "sub" / MANIFEST).write_text("{}"), "sub/MANIFEST.json was modified"),
])
def test_tampered_bundle_fails_to_load(tmp_path, tamper, message):
    b = Registry(tmp_path / "reg").register(_staging(tmp_path), "m")
    for p in b.path.rglob("*"):
        if p.is_file():
            p.chmod(0o644)
    tamper(b.path)
    with pytest.raises(BundleIntegrityError, match=message):
        load(b.path)


def test_a_forged_manifest_is_detected(tmp_path):
    b = Registry(tmp_path / "reg").register(_staging(tmp_path), "m")
    mf = b.path / MANIFEST
    mf.chmod(0o644)
    m = json.loads(mf.read_text())
    (b.path / "model.json").chmod(0o644)
    (b.path / "model.json").write_text("{}")
    m["files"]["model.json"] = hashlib.sha256(b"{}").hexdigest()  # hashes updated, id left alone
    mf.write_text(json.dumps(m))
    with pytest.raises(BundleIntegrityError, match="bundle id does not match"):
        verify(b.path)


def test_find_by_prefix_and_name(tmp_path):
    reg = Registry(tmp_path / "reg")
    a = reg.register(_staging(tmp_path, "s1"), "m")
    assert reg.find(a.bundle_id[:8]).path == a.path
    assert reg.find(a.path.name).path == a.path
    assert load(a.bundle_id[:10], tmp_path / "reg").bundle_id == a.bundle_id
    with pytest.raises(RegistryError, match="no bundle"):
        reg.find("ffffffffff")


def test_not_a_bundle(tmp_path):
    with pytest.raises(BundleIntegrityError, match="not a model bundle"):
        verify(tmp_path)


def test_summary_reads_metadata(tmp_path):
    b = Registry(tmp_path / "reg").register(_staging(tmp_path), "m")
    s = b.summary()
    assert s["test_auroc"] == 0.8 and s["task"] == "t" and s["files"] == 5


def _writable(folder):
    for p in [folder, *folder.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)


def _rewrite_consistently(folder):
    """Change model.json and re-derive the manifest's hashes and id from the new content, as a forger would."""
    _writable(folder)
    (folder / "model.json").write_text('{"w": "evil"}')
    m = json.loads((folder / MANIFEST).read_text())
    m["files"]["model.json"] = hashlib.sha256(b'{"w": "evil"}').hexdigest()
    m["bundle_id"] = _independent_id(folder)
    (folder / MANIFEST).write_text(json.dumps(m))
    return m["bundle_id"]


def test_nested_manifest_named_file_is_hashed(tmp_path):
    b = Registry(tmp_path / "reg").register(_staging(tmp_path), "m")
    assert "sub/MANIFEST.json" in b.files and MANIFEST not in b.files
    assert b.files["sub/MANIFEST.json"] == hashlib.sha256((b.path / "sub" / MANIFEST).read_bytes()).hexdigest()


def test_a_consistent_rewrite_is_refused_by_the_folder_name(tmp_path):
    b = Registry(tmp_path / "reg").register(_staging(tmp_path), "readmission-30d")
    forged = _rewrite_consistently(b.path)
    assert forged[:12] != b.bundle_id[:12]
    with pytest.raises(BundleIntegrityError, match=f"named for bundle {b.bundle_id[:12]}.*bundle {forged[:12]}"):
        verify(b.path)
    with pytest.raises(BundleIntegrityError, match="rewritten after registration"):
        Registry(tmp_path / "reg").find(b.path.name)


def test_a_copy_under_another_folder_name_still_verifies(tmp_path):
    b = Registry(tmp_path / "reg").register(_staging(tmp_path), "m")
    copy = tmp_path / "deployed" / "current-model"
    shutil.copytree(b.path, copy)
    assert verify(copy).bundle_id == b.bundle_id
    link = tmp_path / "latest"
    link.symlink_to(b.path)
    assert verify(link).bundle_id == b.bundle_id


def test_a_damaged_manifest_is_listed_and_hides_no_other_bundle(tmp_path):
    reg = Registry(tmp_path / "reg")
    bad = reg.register(_staging(tmp_path, "s1"), "m")
    good = reg.register(_staging(tmp_path, "s2", text="v2"), "m")
    _writable(bad.path)
    (bad.path / MANIFEST).write_text("{ truncated")
    listed = {b.path: b for b in reg.bundles()}
    assert set(listed) == {bad.path, good.path}
    assert listed[good.path].damaged is None and listed[good.path].bundle_id == good.bundle_id
    assert "unreadable MANIFEST.json" in listed[bad.path].damaged and listed[bad.path].bundle_id == bad.bundle_id[:12]
    assert reg.find(good.bundle_id[:12]).bundle_id == good.bundle_id
    with pytest.raises(BundleIntegrityError, match=r"unreadable MANIFEST\.json"):
        reg.find(bad.path.name)
    res = CliRunner().invoke(app, ["models", "list", "-r", str(tmp_path / "reg"), "--json"])
    assert res.exit_code == 1, res.output  # listed in full, then exit 1: a bundle failed its integrity check
    assert bad.path.name in res.stderr and good.path.name not in res.stderr
    rows = {r["path"]: r for r in json.loads(res.stdout)}
    assert rows[str(good.path)]["integrity"] == "ok"
    assert rows[str(bad.path)]["integrity"].startswith("FAILED") and "unreadable" in rows[str(bad.path)]["integrity"]


def test_models_list_exit_code_says_whether_every_bundle_is_intact(tmp_path):
    reg = Registry(tmp_path / "reg")
    reg.register(_staging(tmp_path, "s1"), "m")
    b = reg.register(_staging(tmp_path, "s2", text="v2"), "m")
    res = CliRunner().invoke(app, ["models", "list", "-r", str(tmp_path / "reg")])
    assert res.exit_code == 0, res.output
    _writable(b.path)
    (b.path / "report.html").write_text("<html>edited</html>")
    res = CliRunner().invoke(app, ["models", "list", "-r", str(tmp_path / "reg")])
    assert res.exit_code == 1, res.output
    assert res.stdout.count("FAILED") == 1 and res.stdout.count(" ok ") == 1  # both rows, then the exit code
    assert res.stderr.strip() == f"1 bundle(s) failed the integrity check: {b.path.name}"
    assert "exit code 1" in " ".join(CliRunner().invoke(app, ["models", "list", "--help"]).output.split()).lower()


@pytest.mark.parametrize("kind", ["missing", "file"])
def test_models_list_refuses_a_registry_that_is_not_a_folder(tmp_path, kind):
    where = tmp_path / "nosuch"
    if kind == "file":
        where.write_text("x")
    res = CliRunner().invoke(app, ["models", "list", "--registry", str(where)])
    assert res.exit_code == 2, res.output
    assert res.stderr.strip() == f"error: --registry {where}: " + ("no such folder" if kind == "missing"
                                                                    else "not a folder")
    assert not res.stdout


def test_an_id_prefix_under_six_characters_is_called_too_short(tmp_path):
    reg = Registry(tmp_path / "reg")
    a = reg.register(_staging(tmp_path, "s1"), "m")
    with pytest.raises(RegistryError, match="an id prefix needs at least 6 characters"):
        reg.find(a.bundle_id[:4])
    with pytest.raises(RegistryError, match="no bundle 'nope'"):  # not an id prefix at all
        reg.find("nope")
    assert reg.find(a.bundle_id[:6]).bundle_id == a.bundle_id
    res = CliRunner().invoke(app, ["models", "show", a.bundle_id[:4], "--registry", str(tmp_path / "reg")])
    assert res.exit_code == 2, res.output
    assert res.stderr.strip() == f"error: '{a.bundle_id[:4]}': an id prefix needs at least 6 characters"
    helped = " ".join(CliRunner().invoke(app, ["models", "show", "--help"]).output.replace("│", " ").split())
    assert "at least 6 characters" in helped
