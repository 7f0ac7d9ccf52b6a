"""Which of two copies of one resource (same Type/id) to keep.

A feed may send a resource more than once: a Bulk export and a later `_since` export, a history Bundle (newest
version first), a result sent as `final` and then again as `entered-in-error`. The copy kept is the newer by the
resource's own `meta.lastUpdated` when both copies carry one, else by `meta.versionId` when both are whole
numbers, else the one that arrived later. Arrival order alone would be wrong for a history Bundle, and for a
stale export loaded after a fresh one.

Ingest (inside a unit, and across units and runs when duplicates are settled) and the bedside (a prefetch that
names a resource twice) apply this one rule, so training and the service read the same version.

A `meta.lastUpdated` that is not a valid instant, or a `versionId` that is not a whole number, is treated as
absent: careloop reads nothing else from `meta`, so it does not quarantine a resource for it.
"""

from __future__ import annotations

from typing import NamedTuple

from careloop.ingest.mapping import Reject, parse_time


class Version(NamedTuple):
    updated: int | None  # meta.lastUpdated, UTC microseconds
    number: int | None  # meta.versionId, when a whole number


UNVERSIONED = Version(None, None)


def version_of(last_updated: object, version_id: object) -> Version:
    """The version a copy declares in its `meta` (either part None when absent or unreadable)."""
    updated = None
    if isinstance(last_updated, str) and len(last_updated) > 10:  # an instant, never a bare date
        try:
            updated = parse_time(last_updated, "meta.lastUpdated")
        except Reject:
            updated = None
    number = None
    if isinstance(version_id, str) and version_id.isascii() and version_id.isdigit() and len(version_id) <= 18:
        number = int(version_id)
    return Version(updated, number)


def meta_version(meta: object) -> Version:
    """`version_of` a decoded resource's `meta` (an `ingest.model.Meta`, or None)."""
    if meta is None:
        return UNVERSIONED
    return version_of(getattr(meta, "lastUpdated", None), getattr(meta, "versionId", None))


def supersedes(later: Version, earlier: Version) -> bool:
    """Does a copy that arrived after another replace it? See the module's docstring for the rule."""
    if later.updated is not None and earlier.updated is not None and later.updated != earlier.updated:
        return later.updated > earlier.updated
    if later.number is not None and earlier.number is not None and later.number != earlier.number:
        return later.number > earlier.number
    return True


def newest(copies: list[Version]) -> int:
    """Index of the copy kept among copies listed in arrival order: each replaces the one kept so far if it
    `supersedes` it."""
    kept = 0
    for i in range(1, len(copies)):
        if supersedes(copies[i], copies[kept]):
            kept = i
    return kept
