"""Immutable model bundles: a directory whose content hash is its identity.

`Registry(root).register(staging, name)` hashes every file of a finished bundle (SHA-256), derives the bundle id
from the sorted list of (path, hash), writes `MANIFEST.json`, makes the files read-only and moves the directory
to `root/<name>-<id12>/`. `load` re-hashes every file first and refuses a bundle with a changed, missing or extra
file, so what the service runs is exactly what the committee reviewed.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

from careloop.errors import CareloopError

MANIFEST = "MANIFEST.json"
METADATA = "bundle.json"


class BundleIntegrityError(CareloopError):
    """A bundle's files no longer match its manifest: it must not be used."""


class RegistryError(CareloopError):
    pass


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _files(folder: Path) -> list[str]:
    """Every file's path relative to `folder`, except the top-level manifest (a nested MANIFEST.json is content)."""
    rels = (p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    return sorted(r for r in rels if r != MANIFEST)


_FOLDER_ID = re.compile(r"-([0-9a-f]{12})$")
_HEX = re.compile(r"[0-9a-fA-F]+")
MIN_PREFIX = 6  # characters of a bundle id that `Registry.find` takes as a prefix


def folder_id(folder: Path) -> str | None:
    """The 12-character id suffix of a registry folder name `<name>-<id12>` (symlinks resolved), None without one.

    >>> folder_id(Path("readmission-30d-0123456789ab")), folder_id(Path("current-model"))
    ('0123456789ab', None)
    """
    m = _FOLDER_ID.search(folder.resolve().name)
    return m.group(1) if m else None


def release_time() -> dt.datetime:
    """When a bundle is made, as its report, card and manifest say: now, or the `SOURCE_DATE_EPOCH` the
    environment gives (the reproducible-builds convention, seconds since 1970 UTC). Training is seeded, so with it
    the same data, code and seeds give the same files, hence the same bundle id, and registering again is a no-op."""
    raw = os.environ.get("SOURCE_DATE_EPOCH")
    if raw is None or raw.strip() == "":
        return dt.datetime.now(dt.UTC).replace(microsecond=0)
    try:
        return dt.datetime.fromtimestamp(int(raw.strip()), dt.UTC)
    except (ValueError, OverflowError, OSError):
        raise RegistryError(f"SOURCE_DATE_EPOCH must be a whole number of seconds since 1970-01-01 UTC, not "
                            f"{raw[:40]!r}") from None


def content_id(files: dict[str, str]) -> str:
    """The bundle id: SHA-256 over the sorted `path hash` lines (names and contents, nothing else)."""
    text = "".join(f"{p} {h}\n" for p, h in sorted(files.items()))
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class Bundle:
    path: Path
    bundle_id: str
    name: str
    created: str
    files: dict[str, str]
    damaged: str | None = None  # why the manifest could not be read (only in `Registry.bundles()` listings)

    @property
    def metadata(self) -> dict:
        return json.loads((self.path / METADATA).read_text())

    def read_json(self, name: str) -> dict:
        return json.loads((self.path / name).read_text())

    def model(self):
        """The bundle's RiskModel (verified on load)."""
        from careloop.modeling import RiskModel

        return RiskModel.load(self.path)

    def summary(self) -> dict:
        meta = self.metadata
        return {"bundle_id": self.bundle_id, "name": self.name, "created": self.created, "path": str(self.path),
                "task": meta.get("task"), "estimator": meta.get("estimator"),
                "test_auroc": meta.get("metrics", {}).get("auroc"),
                "threshold": (meta.get("operating_point") or {}).get("threshold"), "files": len(self.files)}


def verify(path: str | Path) -> Bundle:
    """Re-hash every file of the bundle at `path`; raise BundleIntegrityError naming the first difference."""
    folder = Path(path)
    mf = folder / MANIFEST
    if not mf.is_file():
        raise BundleIntegrityError(f"{folder}: not a model bundle (no {MANIFEST})")
    try:
        manifest = json.loads(mf.read_text())
        recorded: dict[str, str] = dict(manifest["files"])
        bundle_id, bundle_name = str(manifest["bundle_id"]), str(manifest["name"])
        created = str(manifest["created"])
    except (ValueError, KeyError, TypeError) as e:
        raise BundleIntegrityError(f"{folder}: unreadable {MANIFEST} ({type(e).__name__}: {e})") from None
    present = _files(folder)
    for name in sorted(set(recorded) - set(present)):
        raise BundleIntegrityError(f"{folder}: file {name} is missing; the bundle was changed after registration")
    for name in sorted(set(present) - set(recorded)):
        raise BundleIntegrityError(f"{folder}: file {name} was added after registration")
    for name in present:
        if _sha256(folder / name) != recorded[name]:
            raise BundleIntegrityError(f"{folder}: file {name} was modified after registration (hash mismatch)")
    if content_id(recorded) != bundle_id:
        raise BundleIntegrityError(f"{folder}: the manifest's bundle id does not match its file list")
    _check_folder_name(folder, bundle_id)
    return Bundle(folder, bundle_id, bundle_name, created, recorded)


def _check_folder_name(folder: Path, bundle_id: str) -> None:
    """The registry names a bundle's folder by its id, so a folder whose id suffix differs holds rewritten content
    (files and manifest changed together). A folder not named `<name>-<id12>` (a copy deployed elsewhere) has no
    suffix to compare and is judged by its manifest alone."""
    suffix = folder_id(folder)
    if suffix is not None and suffix != bundle_id[:12]:
        raise BundleIntegrityError(f"{folder}: the folder is named for bundle {suffix} but its files and manifest "
                                   f"are bundle {bundle_id[:12]}; the bundle was rewritten after registration")


def _listed(mf: Path) -> Bundle:
    """The bundle a manifest describes, unverified; an unreadable manifest gives a `damaged` entry (named by its
    folder) so that one broken bundle is listed as such instead of hiding every other one."""
    try:
        m = json.loads(mf.read_text())
        return Bundle(mf.parent, str(m["bundle_id"]), str(m["name"]), str(m["created"]), dict(m["files"]))
    except (OSError, ValueError, KeyError, TypeError) as e:
        folder = mf.parent
        suffix = folder_id(folder) or ""
        name = folder.name.removesuffix(f"-{suffix}") if suffix else folder.name
        return Bundle(folder, suffix, name, "", {}, damaged=f"unreadable {MANIFEST} ({type(e).__name__}: {e})")


class Registry:
    """A folder of bundles. Bundles are never modified; registering identical content twice is a no-op."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def register(self, staging: str | Path, name: str, *, run: dict | None = None) -> Bundle:
        """Hash, seal and move a finished bundle into the registry. `run`: what this run alone says (e.g. how long
        each phase took), kept in the manifest beside the hashes, outside the content the id is made of; content
        already registered is not registered again (the earlier bundle, and its manifest, are kept)."""
        staging = Path(staging)
        files = {p: _sha256(staging / p) for p in _files(staging)}
        bid = content_id(files)
        target = self.root / f"{name}-{bid[:12]}"
        if target.exists():
            shutil.rmtree(staging)
            return verify(target)
        created = release_time().isoformat(timespec="seconds")
        manifest = {"bundle_id": bid, "name": name, "created": created, "algorithm": "sha256", "files": files,
                    **({"run": run} if run else {})}
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
        for p in [*files, MANIFEST]:
            os.chmod(staging / p, stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
        self.root.mkdir(parents=True, exist_ok=True)
        os.replace(staging, target)
        return verify(target)

    def bundles(self) -> list[Bundle]:
        """Every bundle under the root, newest first, unverified (`verify` each to check it); one whose manifest
        cannot be read is listed with `damaged` set (and no id beyond its folder's suffix), not hidden."""
        out = [_listed(mf) for mf in sorted(self.root.glob(f"*/{MANIFEST}"))]
        return sorted(out, key=lambda b: (b.created, b.bundle_id), reverse=True)

    def find(self, ref: str) -> Bundle:
        """A bundle by path, directory name, or a unique prefix of its id (at least 6 characters)."""
        p = Path(ref)
        if (p / MANIFEST).is_file():
            return verify(p)
        hits = [b for b in self.bundles()
                if b.path.name == ref or (len(ref) >= MIN_PREFIX and b.bundle_id.startswith(ref))]
        if not hits:
            if len(ref) < MIN_PREFIX and _HEX.fullmatch(ref):
                raise RegistryError(f"{ref!r}: an id prefix needs at least {MIN_PREFIX} characters")
            raise RegistryError(f"no bundle {ref!r} in {self.root}")
        if len(hits) > 1:
            raise RegistryError(f"{ref!r} matches {len(hits)} bundles; give more of the id")
        return verify(hits[0].path)


def load(ref: str | Path, registry: str | Path | None = None) -> Bundle:
    """Verify and open a bundle by path (or by id within `registry`)."""
    if registry is None or (Path(ref) / MANIFEST).is_file():
        return verify(ref)
    return Registry(registry).find(str(ref))


__all__ = ["MANIFEST", "METADATA", "Bundle", "BundleIntegrityError", "Registry", "RegistryError", "content_id",
           "folder_id", "load", "verify"]
