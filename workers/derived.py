"""What consolidation derived from a deleted record: :func:`derived_from`.

A trace states its episodes' facts word for word; a category and the domain profile summarise
what lies below them. So a record's text lives on in every derived record above it, and in
their earlier versions. Deleting the record (a tombstone reaching the ingest) deletes those
too, all the way up, and what remains of their sources is consolidated again.
"""

from __future__ import annotations

from collections.abc import Sequence

from hivemem.pool.enums import Zone
from hivemem.pool.ports import ZoneStore
from hivemem.pool.records import MemoryRecord

#: Levels of derivation followed at most (episode, trace, category, domain, with versions).
_MAX_STEPS = 64


def derived_from(
    store: ZoneStore, zone: Zone, deleted: Sequence[MemoryRecord]
) -> tuple[list[MemoryRecord], list[MemoryRecord]]:
    """For the stored records ``deleted`` (about to be tombstoned): the records derived from
    them, directly or not (``consolidated_into``, upwards), with the versions those superseded;
    and the remaining sources of those, which lose their consolidation link. Both empty, with
    no read, when no deleted record was consolidated (the common case)."""
    gone = {r.id for r in deleted}
    doomed: dict[str, MemoryRecord] = {}
    frontier = sorted({i for r in deleted for i in r.consolidated_into} - gone)
    seen = gone | set(frontier)
    for _ in range(_MAX_STEPS):
        if not frontier:
            break
        above: set[str] = set()
        for record in store.get(zone, frontier):
            doomed[record.id] = record
            if record.supersedes is not None:
                above.add(record.supersedes)
            above.update(record.consolidated_into)
        frontier = sorted(above - seen)
        seen |= above
    if not doomed:
        return [], []
    sources = {s for record in doomed.values() for s in record.sources} - gone - doomed.keys()
    remaining = store.get(zone, sorted(sources)) if sources else []
    return list(doomed.values()), remaining
