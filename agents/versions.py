"""Version chains: supersession links a new record to the one it replaces.

A chain runs oldest → newest through ``supersedes`` / ``superseded_by``. Superseding stamps the
old record with ``superseded_at`` and, if it had no end of validity, ``valid_until`` = the new
record's ``valid_from``. Callers hold the memory's write lock.
"""

from __future__ import annotations

from datetime import datetime

from hivemem.pool.errors import MemoryNotFound, SupersessionConflict
from hivemem.pool.ports import LocalIndex
from hivemem.pool.records import MemoryRecord

#: Guard against a corrupted (cyclic) chain.
_MAX_CHAIN = 10_000


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


def link(index: LocalIndex, old: MemoryRecord, new: MemoryRecord, now: datetime) -> None:
    """Persist ``new`` and mark ``old`` as superseded by it."""
    index.upsert([new])
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
