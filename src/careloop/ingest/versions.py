"""Which of two copies of one resource (same Type/id) to keep.

A feed may send a resource more than once: a Bulk export and a later `_since` export, a history Bundle (newest
version first), a result sent as `final` and then again as `entered-in-error`. The copy kept is the newest by the
resource's own `meta.lastUpdated`, else by `meta.versionId` (a whole number), else the one that arrived last;
a copy that states a lastUpdated counts as newer than one that does not, and likewise for versionId. Arrival
order alone would be wrong for a history Bundle, and for a stale export loaded after a fresh one.

This is a total order (`rank`), so the copy kept does not depend on how the input was cut into units, nor on
the order in which copies meet: the winner of a unit, then of the units (settling), is the winner of all.
Ingest (inside a unit, and across units and runs when duplicates are settled) and the bedside (a prefetch that
names a resource twice) apply this one rule, so training and the service read the same version.

A `meta.lastUpdated` that is not a valid instant, a `versionId` that is not a whole number, or a `meta` that is
not an object, counts as absent: careloop reads nothing else from `meta`, so it quarantines nothing for it.
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
    """`version_of` a decoded resource's `meta` (an `ingest.model.Meta`; anything else is unversioned)."""
    if meta is None or not hasattr(meta, "lastUpdated"):
        return UNVERSIONED
    return version_of(meta.lastUpdated, meta.versionId)  # type: ignore[attr-defined]


def rank(v: Version) -> tuple[bool, int, bool, int]:
    """The order of versions: by lastUpdated (stated beats absent), then by versionId (likewise)."""
    return (v.updated is not None, v.updated or 0, v.number is not None, v.number or 0)


def supersedes(later: Version, earlier: Version) -> bool:
    """Does a copy that arrived after another replace it? Yes unless it ranks lower (a tie: the later wins)."""
    return rank(later) >= rank(earlier)


def preference(copies: list[Version]) -> list[int]:
    """Indexes of copies listed in arrival order, the one to keep first: by rank, the later among equals."""
    return sorted(range(len(copies)), key=lambda i: (rank(copies[i]), i), reverse=True)


def newest(copies: list[Version]) -> int:
    """Index of the copy kept among copies listed in arrival order (`preference`'s first)."""
    return max(range(len(copies)), key=lambda i: (rank(copies[i]), i))
