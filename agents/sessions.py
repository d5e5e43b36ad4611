"""Sessions: conversation adjacency and the end of a session.

Each memory added to a session follows the previous one. :class:`SessionChains` remembers the
last memory of every (user, session) it has seen and, for a session it has not seen in this
process, finds the chain's tail in the index once. :class:`NeighbourhoodCache` keeps those
immutable links at hand for search. :func:`bubble_up` makes the versions that end a session.
Writers hold the memory's write lock.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from datetime import datetime

from pydantic import ValidationError

from hivemem.pool.enums import Tier
from hivemem.pool.errors import InvalidInput
from hivemem.pool.filters import And, Cond
from hivemem.pool.ids import new_record_id
from hivemem.pool.ports import LocalIndex, Neighbourhood
from hivemem.pool.records import MemoryRecord, Scope

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
        # Plain tuples of strings: the garbage collector does not track them, so a cache of
        # millions of entries adds nothing to collection pauses.
        self._known: dict[str, tuple[str | None, str | None]] = {}
        self._lock = threading.Lock()

    def remember(self, records: Sequence[MemoryRecord]) -> None:
        """Note the neighbourhoods of records just written."""
        self._store({r.id: (r.scope.session_id, r.follows) for r in records})

    def lookup(self, ids: Sequence[str]) -> dict[str, Neighbourhood]:
        """The neighbourhoods of ``ids`` (live records only)."""
        with self._lock:
            known = {i: self._known[i] for i in ids if i in self._known}
        found = {i: Neighbourhood(*pair) for i, pair in known.items()}
        missing = [i for i in ids if i not in known]
        if missing:
            fetched = self._index.neighbourhoods(missing)
            self._store({i: (n.session_id, n.follows) for i, n in fetched.items()})
            found.update(fetched)
        return found

    def _store(self, entries: dict[str, tuple[str | None, str | None]]) -> None:
        with self._lock:
            if len(self._known) + len(entries) > self._max_entries:
                self._known.clear()
            self._known.update(entries)


#: The metadata key that names the session a promoted version came from.
BUBBLED_FROM = "bubbled_from_session"


def bubble_up(
    index: LocalIndex, where: And, session_id: str, now: datetime, *, owner: str | None
) -> list[tuple[MemoryRecord, MemoryRecord]]:
    """How the records of ``session_id`` matching ``where`` are promoted to user scope: each
    gets a new version without session and run, with the same vectors, in LONG_TERM, marked
    ``bubbled_from_session`` in its metadata where that fits (a record whose metadata is full
    goes without the mark: its session is in the version it replaces). The agent is kept,
    except that a new version of a record another agent shared is ``owner``'s, as
    :meth:`~hivemem.agents.superseding.Superseder.supersede` has it. Each version is checked
    as a received one would be. Returns ``(record, new version)`` pairs, for the caller to
    link (:func:`hivemem.agents.versions.link`) under the write lock."""
    promoted = []
    for old in [
        r for r in index.scan(where, with_vectors=True) if r.scope.session_id == session_id
    ]:
        agent_id = old.scope.agent_id
        if old.received_from is not None and agent_id is not None:
            agent_id = owner
        fields = {
            **old.model_dump(),
            "id": new_record_id(),
            "scope": Scope(user_id=old.scope.user_id, agent_id=agent_id),
            "received_from": None,
            "tier": Tier.LONG_TERM,
            "supersedes": old.id,
            "follows": None,
            "recorded_at": now,
            "access_count": 0,
            "last_accessed_at": None,
        }
        try:
            new = MemoryRecord.model_validate(
                {**fields, "metadata": {**old.metadata, BUBBLED_FROM: session_id}}
            )
        except (ValidationError, InvalidInput):  # its metadata holds no more
            new = MemoryRecord.model_validate(fields)
        promoted.append((old, new))
    return promoted
