"""New versions of records a memory already holds: :class:`Superseder`, the service behind
:meth:`~hivemem.agents.memory.HierarchicalMemory.supersede` and
:meth:`~hivemem.agents.memory.HierarchicalMemory.end_session`.

Each new version is noted in the memory's journal (:mod:`hivemem.agents.write_ahead`), linked
into its chain (:mod:`hivemem.agents.versions`), counted against its user's tier limits and told
to the observers, all under the memory's write lock, so that what is in the index is always
shared, in order, even when the process is killed in the middle. When telling fails, the new
versions leave the index and the records they replaced are current again, as they were
(:meth:`~hivemem.agents.write_path.WritePath.tell`).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from hivemem.agents import versions
from hivemem.agents.builder import RecordBuilder
from hivemem.agents.inputs import MemoryInput
from hivemem.agents.scoping import resolve_scope
from hivemem.agents.search import visible
from hivemem.agents.sessions import bubble_up
from hivemem.agents.write_path import WritePath
from hivemem.pool.errors import InvalidInput
from hivemem.pool.filters import MemoryFilter
from hivemem.pool.ids import check_record_id
from hivemem.pool.ports import LocalIndex
from hivemem.pool.records import MemoryRecord, acts_on


def _check_same_place(old: MemoryRecord, new: MemoryRecord) -> None:
    """InvalidInput unless ``new``, a version of ``old``, belongs to the same user, zone and
    compartments (:func:`~hivemem.pool.records.acts_on`). A version inherits its record's labels
    (tags, entities, metadata): in a lower zone, or without a compartment, it would carry them
    to agents the record is hidden from; and every receiver refuses a version that changes any
    of the three, so the agents would disagree on which version is current. It keeps the level
    too: agents that receive the record's level and not the new one would keep the record
    current, never told of its new version. To move a memory, delete it and add it anew."""
    if new.level != old.level:
        raise InvalidInput(
            f"a new version keeps its record's level ({old.level.value}, not"
            f" {new.level.value}): delete the record and add a new one instead",
            field="level",
        )
    if acts_on(new, old):
        return
    if new.scope.user_id != old.scope.user_id:
        raise InvalidInput(
            "a new version belongs to its record's user: delete the record and add one for"
            " the other user instead",
            field="scope",
        )
    if new.zone != old.zone:
        raise InvalidInput(
            f"a new version keeps its record's zone ({old.zone.value}, not {new.zone.value}:"
            " asked, or lifted by sensitive content): delete the record and add a new one"
            " instead",
            field="zone",
        )
    held = ", ".join(old.compartments) or "none"
    raise InvalidInput(
        f"a new version keeps its record's compartments ({held}): delete the record and"
        " add a new one instead",
        field="compartments",
    )


class Superseder:
    """Makes the new versions of one memory's records. ``check_open`` raises when the memory
    is closed; a supersession asks it again under the lock, after embedding."""

    def __init__(
        self,
        index: LocalIndex,
        builder: RecordBuilder,
        writes: WritePath,
        clock: Callable[[], datetime],
        check_open: Callable[[], None],
    ) -> None:
        self._index = index
        self._builder = builder
        self._writes = writes
        self._clock = clock
        self._check_open = check_open

    def supersede(
        self, record_id: str, content: str, changes: dict[str, Any], *, owner: str | None
    ) -> MemoryRecord:
        """Replace the current record ``record_id`` by a new version of ``content`` with
        ``changes`` (see HierarchicalMemory.supersede); ``owner`` scopes a new version of a
        record another agent shared. Validated and embedded before the lock is taken."""
        check_record_id(record_id, field="record_id")
        old = versions.require(self._index, record_id)
        scope = old.scope
        if old.received_from is not None and scope.agent_id is not None:
            scope = scope.model_copy(update={"agent_id": owner})
        inherited = MemoryInput(
            content=content,
            **{
                "scope": scope,
                "level": old.level,
                "category": old.category,
                "zone": old.zone,
                "compartments": old.compartments,
                "importance": old.importance,
                "tags": old.tags,
                "entities": old.entities,
                "metadata": old.metadata,
                **changes,
            },
        )
        now = self._clock()
        draft = self._builder.validate([inherited], None, now)[0]
        _check_same_place(old, draft)
        update = {"supersedes": old.id, "follows": old.follows}
        embedded, dense = self._builder.embed([draft.model_copy(update=update)])
        new = embedded[0]
        with self._writes.lock:
            self._check_open()
            old = versions.require(self._index, record_id)
            versions.check_current(self._index, old)
            self._writes.write_versions([(old, new)], now, dense)
        return new

    def end_session(
        self, user_id: str, session_id: str, bubble_importance: float, *, owner: str | None
    ) -> list[MemoryRecord]:
        """Promote the current memories of the session with importance ≥
        ``bubble_importance`` to user scope (see HierarchicalMemory.end_session); the
        promoted versions."""
        target = resolve_scope(None, user_id, session_id)
        flt = MemoryFilter(importance_min=bubble_importance)
        with self._writes.lock:
            where = visible(target, flt, exact=False, as_of=None, include_superseded=False)
            now = self._clock()
            pairs = bubble_up(self._index, where, session_id, now, owner=owner)
            self._writes.write_versions(pairs, now)
        return [new for _, new in pairs]
