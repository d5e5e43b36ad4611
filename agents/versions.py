"""Version chains: supersession links a new record to the one it replaces.

A chain runs oldest → newest through ``supersedes`` / ``superseded_by``. Superseding stamps the
old record with ``superseded_at`` and, if it had no end of validity and the new record's
validity starts later than its own, ``valid_until`` = the new record's ``valid_from``
(:func:`derived_end`). A new version valid from the same time or earlier (a promotion at the
end of a session, a correction) leaves the old one's validity open: ``superseded_at`` says from
when it was no longer believed, so a query ``as_of`` a time before that still finds it. Callers
hold the memory's write lock.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import structlog

from hivemem.pool.errors import MemoryNotFound, SupersessionConflict
from hivemem.pool.filters import And, Cond
from hivemem.pool.ports import LocalIndex, Vector
from hivemem.pool.records import MemoryRecord, Tombstone, acts_on, split_tombstones

log = structlog.get_logger(__name__)

#: Guard against a corrupted (cyclic) chain.
_MAX_CHAIN = 10_000
_TOMBSTONE_CHUNK = 256


def require(index: LocalIndex, record_id: str, *, with_vectors: bool = False) -> MemoryRecord:
    """The live record ``record_id``; raises MemoryNotFound."""
    found = index.get([record_id], with_vectors=with_vectors)
    if not found:
        raise MemoryNotFound(record_id)
    return found[0]


def _walk(index: LocalIndex, record: MemoryRecord, link: str) -> list[MemoryRecord]:
    """``record`` and the surviving versions reached by following ``link`` (``supersedes``:
    older, ``superseded_by``: newer) until it ends or points at a missing record."""
    walked = [record]
    while len(walked) < _MAX_CHAIN:
        following: str | None = getattr(walked[-1], link)
        found = index.get([following]) if following is not None else []
        if not found:
            break
        walked.append(found[0])
    return walked


def head(index: LocalIndex, record: MemoryRecord) -> MemoryRecord:
    """The newest version of ``record``'s chain that still exists."""
    return _walk(index, record, "superseded_by")[-1]


def check_current(index: LocalIndex, record: MemoryRecord) -> None:
    """Raise SupersessionConflict unless ``record`` is the current version."""
    if not record.is_current:
        raise SupersessionConflict(record.id, head(index, record).id)


def link(
    index: LocalIndex,
    old: MemoryRecord,
    new: MemoryRecord,
    now: datetime,
    dense: Vector | None = None,
) -> None:
    """Persist ``new`` (with ``dense``, its vector as a 1-row matrix, when given) and mark
    ``old`` as superseded by it."""
    index.upsert([new], dense)
    _mark_superseded(index, old, new, now)


def derived_end(record: MemoryRecord, successor: MemoryRecord) -> datetime | None:
    """The end of validity ``successor`` gives ``record`` (one with none of its own): its
    ``valid_from`` when that is later than the record's, else None."""
    return successor.valid_from if successor.valid_from > record.valid_from else None


def _mark_superseded(
    index: LocalIndex, old: MemoryRecord, new: MemoryRecord, now: datetime
) -> None:
    fields: dict[str, object] = {"superseded_at": now, "superseded_by": new.id}
    if old.valid_until is None and (end := derived_end(old, new)) is not None:
        fields["valid_until"] = end
    index.update_fields({old.id: fields})


def restore(index: LocalIndex, records: Sequence[MemoryRecord]) -> None:
    """Put back the version fields of ``records`` as they hold them: undoes :func:`link`'s mark
    on a predecessor, given as it was before (its new version failed to be told)."""
    if records:
        index.update_fields(
            {
                r.id: {
                    "superseded_at": r.superseded_at,
                    "superseded_by": r.superseded_by,
                    "valid_until": r.valid_until,
                }
                for r in records
            }
        )


def complete_link(index: LocalIndex, new: MemoryRecord) -> None:
    """Finish :func:`link` for ``new``, a version this memory wrote, when its process stopped
    between storing it and marking its predecessor (still current): the mark is made as link
    makes it, at ``new``'s recording time. Anything else is left as it is."""
    if new.supersedes is None:
        return
    found = index.get([new.supersedes])
    if found and found[0].superseded_by is None and found[0].id != new.id:
        _mark_superseded(index, found[0], new, new.recorded_at)


def _order(record: MemoryRecord) -> tuple[datetime, str]:
    return (record.recorded_at, record.id)


def _relinked(
    record: MemoryRecord, previous: MemoryRecord | None, successor: MemoryRecord
) -> dict[str, object]:
    """The fields that make ``successor`` the next version of ``record``. An end of validity
    that only came from the previous successor moves with it."""
    fields: dict[str, object] = {
        "superseded_at": successor.recorded_at,
        "superseded_by": successor.id,
    }
    derived = previous is not None and record.valid_until == derived_end(record, previous)
    if record.valid_until is None or derived:
        fields["valid_until"] = derived_end(record, successor)
    return fields


def merge(index: LocalIndex, new: MemoryRecord) -> None:
    """Place ``new``, a version received from another agent and already stored, in its chain.

    Chains are ordered by ``(recorded_at, id)`` and the last one is current. So when two agents
    supersede the same record at once, every agent that receives both versions ends with the
    same chain and the same current version, whatever the order they arrived in; neither version
    is lost. Without its predecessor here, ``new`` stays a chain of its own.
    """
    if new.supersedes is None:
        return
    found = index.get([new.supersedes])
    if not found or not acts_on(new, found[0]):
        return  # not here, or another user's (zone's, compartments') record: a chain of its own
    cursor = _walk(index, found[0], "supersedes")[-1]
    while cursor.superseded_by is not None and cursor.superseded_by != new.id:
        following = index.get([cursor.superseded_by])
        if not following or _order(following[0]) > _order(new):
            break
        cursor = following[0]
    if cursor.superseded_by == new.id:
        return
    updates: dict[str, dict[str, object]] = {}
    successor = index.get([cursor.superseded_by]) if cursor.superseded_by else []
    if successor:
        updates[new.id] = _relinked(new, None, successor[0])
    updates[cursor.id] = _relinked(cursor, successor[0] if successor else None, new)
    index.update_fields(updates)


def rightful(index: LocalIndex, tombstones: Sequence[Tombstone]) -> list[Tombstone]:
    """The received ``tombstones`` that may delete what they name here
    (:func:`~hivemem.pool.records.split_tombstones`); the others are logged and dropped."""
    if not tombstones:
        return []
    stored = {r.id: r for r in index.get([t.id for t in tombstones])}
    kept, refused = split_tombstones(tombstones, stored)
    for tombstone in refused:
        log.warning("tombstone_refused", record_id=tombstone.id,
                    reason="another user's, zone's or compartments' record")  # fmt: skip
    return kept


def chain(index: LocalIndex, record_id: str) -> list[MemoryRecord]:
    """Every surviving version of the record's chain, oldest first: forward from the oldest
    version; or, when a version is not linked from its predecessor (it arrived before it),
    back from this record and forward from it."""
    start = require(index, record_id)
    older = _walk(index, start, "supersedes")
    forward = _walk(index, older[-1], "superseded_by")
    if any(r.id == start.id for r in forward):
        return forward
    return [*reversed(older), *_walk(index, start, "superseded_by")[1:]]


def family(index: LocalIndex, record_id: str) -> list[MemoryRecord]:
    """Every version of the record here: its :func:`chain`, then, when a link of the chain
    names a version missing here (a forget of that version's scope removed it, or it never
    arrived), the versions beyond that gap: those of its user, zone and compartments linked to
    the chain through missing versions. The user's records are read for that, only then."""
    linked = chain(index, record_id)
    ids = {r.id for r in linked}
    if all(ref is None or ref in ids for r in linked for ref in (r.supersedes, r.superseded_by)):
        return linked
    start = linked[0]
    same_user = And(all=[Cond(field="scope.user_id", op="eq", value=start.scope.user_id)])
    others = [r for r in index.scan(same_user) if r.id not in ids and acts_on(r, start)]
    links: dict[str, set[str]] = {}
    for record in [*linked, *others]:
        for ref in (record.supersedes, record.superseded_by):
            if ref is not None:
                links.setdefault(record.id, set()).add(ref)
                links.setdefault(ref, set()).add(record.id)
    reached: set[str] = set()
    todo = [start.id]
    while todo:
        node = todo.pop()
        if node not in reached:
            reached.add(node)
            todo.extend(links.get(node, set()) - reached)
    return [*linked, *(r for r in others if r.id in reached)]


def bury(index: LocalIndex, tombstones: Sequence[Tombstone]) -> None:
    """Replace the records ``tombstones`` name by them, in chunks, then purge."""
    for start in range(0, len(tombstones), _TOMBSTONE_CHUNK):
        index.put_tombstones(tombstones[start : start + _TOMBSTONE_CHUNK])
    index.purge()
