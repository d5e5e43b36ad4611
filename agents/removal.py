"""How records leave one agent's memory: :class:`Remover`, the service behind
:class:`~hivemem.agents.memory.HierarchicalMemory`'s delete, forget, expire and clear.

Each removal holds the memory's write lock. Deleted records become tombstones (content and
vectors destroyed); the observers (the pool's sender) are told of them first, so that a process
killed in the middle of a removal has queued every tombstone it applied, and the rest is
finished when the agent attaches again (see :mod:`hivemem.agents.write_ahead`); a retried forget
finds nothing left. Clearing removes records and tombstones here only and tells no one. Forget,
expire and clear find their records without opening content (LocalIndex.tombstones), so they
reach those that reads skip because their key is gone (their user forgotten).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from hivemem.agents import versions
from hivemem.agents.scoping import owned_by
from hivemem.agents.write_path import WritePath
from hivemem.pool.enums import Zone, checked_zone
from hivemem.pool.filters import And, Cond
from hivemem.pool.ids import check_record_id
from hivemem.pool.ports import LocalIndex
from hivemem.pool.records import Scope, Tombstone


class Remover:
    """Removes records from one memory."""

    def __init__(self, index: LocalIndex, writes: WritePath, clock: Callable[[], datetime]) -> None:
        self._index = index
        self._writes = writes
        self._clock = clock

    def delete(self, record_id: str) -> list[str]:
        """Delete the record ``record_id`` and every version of it (see
        HierarchicalMemory.delete); the ids deleted."""
        check_record_id(record_id, field="record_id")
        with self._writes.lock:
            chain = versions.family(self._index, record_id)
            self._writes.ahead.remove([Tombstone.of(r) for r in chain], self._clock())
        return [r.id for r in chain]

    def forget(self, target: Scope) -> int:
        """Delete every record inside ``target`` (see HierarchicalMemory.forget); how many."""
        with self._writes.lock:
            doomed = self._index.tombstones(And(all=owned_by(target)))
            self._writes.ahead.remove(doomed, self._clock())
        return len(doomed)

    def expire(self, zone: Zone, recorded_before: datetime) -> int:
        """Delete every record of ``zone`` recorded before ``recorded_before`` (see
        HierarchicalMemory.expire); how many."""
        where = And(
            all=[
                Cond(field="zone", op="eq", value=checked_zone(zone).value),
                Cond(field="recorded_at", op="lt", value=recorded_before),
            ]
        )
        with self._writes.lock:
            doomed = self._index.tombstones(where)
            self._writes.ahead.remove(doomed, self._clock())
        return len(doomed)

    def clear(self) -> None:
        """Remove every record and tombstone here, telling no one (see
        HierarchicalMemory.clear)."""
        with self._writes.lock:
            ids = [t.id for t in self._index.tombstones(And(all=[]))]
            self._index.remove(ids)
            self._index.purge()
            self._writes.sessions.forget()
