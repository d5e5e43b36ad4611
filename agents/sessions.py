"""Conversation adjacency: each memory added to a session follows the previous one.

:class:`SessionChains` remembers the last memory of every (user, session) it has seen and, for a
session it has not seen in this process, finds the chain's tail in the index once. Callers hold
the memory's write lock.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from hivemem.pool.filters import And, Cond
from hivemem.pool.ports import LocalIndex, Neighbourhood
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


class NeighbourhoodCache:
    """Records' neighbourhoods (session, predecessor), cached in RAM: they never change, so a
    search fetches from the index only those of candidates it has not met before. Bounded:
    past ``max_entries`` the cache starts over. Thread-safe."""

    def __init__(self, index: LocalIndex, *, max_entries: int = 2_000_000) -> None:
        self._index = index
        self._max_entries = max_entries
        self._known: dict[str, Neighbourhood] = {}
        self._lock = threading.Lock()

    def remember(self, records: Sequence[MemoryRecord]) -> None:
        """Note the neighbourhoods of records just written."""
        self._store({r.id: Neighbourhood(r.scope.session_id, r.follows) for r in records})

    def lookup(self, ids: Sequence[str]) -> dict[str, Neighbourhood]:
        """The neighbourhoods of ``ids`` (live records only)."""
        with self._lock:
            found = {i: self._known[i] for i in ids if i in self._known}
        missing = [i for i in ids if i not in found]
        if missing:
            fetched = self._index.neighbourhoods(missing)
            self._store(fetched)
            found.update(fetched)
        return found

    def _store(self, entries: dict[str, Neighbourhood]) -> None:
        with self._lock:
            if len(self._known) + len(entries) > self._max_entries:
                self._known.clear()
            self._known.update(entries)
