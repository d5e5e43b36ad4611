"""Conversation adjacency: each memory added to a session follows the previous one.

:class:`SessionChains` remembers the last memory of every (user, session) it has seen and, for a
session it has not seen in this process, finds the chain's tail in the index once. Callers hold
the memory's write lock.
"""

from __future__ import annotations

from collections.abc import Sequence

from hivemem.pool.filters import And, Cond
from hivemem.pool.ports import LocalIndex
from hivemem.pool.records import MemoryRecord

SessionKey = tuple[str, str]


class SessionChains:
    """Assigns ``follows`` to new session memories."""

    def __init__(self, index: LocalIndex) -> None:
        self._index = index
        self._tails: dict[SessionKey, str | None] = {}

    def link(self, records: Sequence[MemoryRecord]) -> list[MemoryRecord]:
        """The records, in order, each session memory pointing at its predecessor."""
        linked = []
        for record in records:
            session = record.scope.session_id
            if session is None or record.follows is not None:
                linked.append(record)
                continue
            key = (record.scope.user_id, session)
            tail = self._tails[key] if key in self._tails else self._find_tail(key)
            linked.append(record.model_copy(update={"follows": tail}) if tail else record)
            self._tails[key] = record.id
        return linked

    def forget(self) -> None:
        """Drop the cache (after records were removed)."""
        self._tails.clear()

    def _find_tail(self, key: SessionKey) -> str | None:
        user_id, session_id = key
        where = And(
            all=[
                Cond(field="scope.user_id", op="eq", value=user_id),
                Cond(field="scope.session_id", op="eq", value=session_id),
            ]
        )
        records = list(self._index.scan(where))
        followed = {r.follows for r in records}
        tails = [r for r in records if r.id not in followed]
        if not tails:
            return None
        return max(tails, key=lambda r: (r.recorded_at, r.id)).id
