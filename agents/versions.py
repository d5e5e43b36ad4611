"""Version chains: supersession links a new record to the one it replaces.

A chain runs oldest → newest through ``supersedes`` / ``superseded_by``. Superseding stamps the
old record with ``superseded_at`` and, if it had no end of validity, ``valid_until`` = the new
record's ``valid_from``. Callers hold the memory's write lock.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from hivemem.pool.errors import MemoryNotFound, SupersessionConflict
from hivemem.pool.ports import LocalIndex, Vector
from hivemem.pool.records import MemoryRecord, Tombstone

#: Guard against a corrupted (cyclic) chain.
_MAX_CHAIN = 10_000
_TOMBSTONE_CHUNK = 256


def require(index: LocalIndex, record_id: str, *, with_vectors: bool = False) -> MemoryRecord:
    """The live record ``record_id``; raises MemoryNotFound."""
    found = index.get([record_id], with_vectors=with_vectors)
    if not found:
        raise MemoryNotFound(record_id)
    return found[0]


def head(index: LocalIndex, record: MemoryRecord) -> MemoryRecord:
    """The newest version of ``record``'s chain that still exists."""
    current = record
    for _ in range(_MAX_CHAIN):
        if current.superseded_by is None:
            return current
        found = index.get([current.superseded_by])
        if not found:
            return current
        current = found[0]
    return current


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
    fields: dict[str, object] = {"superseded_at": now, "superseded_by": new.id}
    if old.valid_until is None:
        fields["valid_until"] = max(new.valid_from, old.valid_from)
    index.update_fields({old.id: fields})


def chain(index: LocalIndex, record_id: str) -> list[MemoryRecord]:
    """Every surviving version of the record's chain, oldest first."""
    start = require(index, record_id)
    older: list[MemoryRecord] = []
    current = start
    while current.supersedes is not None and len(older) < _MAX_CHAIN:
        found = index.get([current.supersedes])
        if not found:
            break
        current = found[0]
        older.append(current)
    newer: list[MemoryRecord] = []
    current = start
    while current.superseded_by is not None and len(newer) < _MAX_CHAIN:
        found = index.get([current.superseded_by])
        if not found:
            break
        current = found[0]
        newer.append(current)
    return [*reversed(older), start, *newer]


def tombstone(index: LocalIndex, records: Sequence[MemoryRecord], now: datetime) -> None:
    """Replace ``records`` by tombstones, in chunks."""
    for start in range(0, len(records), _TOMBSTONE_CHUNK):
        index.put_tombstones(
            [
                Tombstone(id=r.id, scope=r.scope, level=r.level, zone=r.zone, deleted_at=now)
                for r in records[start : start + _TOMBSTONE_CHUNK]
            ]
        )
