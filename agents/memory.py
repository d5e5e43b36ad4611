"""``HierarchicalMemory``: one agent's fast, local, persistent memory.

A facade: validation and vectors come from :mod:`hivemem.agents.builder`, writes go through
:mod:`hivemem.agents.write_path`, new versions through :mod:`hivemem.agents.superseding`,
removals through :mod:`hivemem.agents.removal`, reads through :mod:`hivemem.agents.reading`
(search in :mod:`hivemem.agents.search`), tiers are kept by :mod:`hivemem.agents.tiers`;
records live in a :class:`~hivemem.pool.ports.LocalIndex` (Qdrant Edge by default) under the
persist directory, so a new process opening the same directory sees everything.

Concurrency: safe to share between threads. Writes (add, supersede, delete, forget, clear, tier
moves) are serialised by one lock; searches run concurrently with them and see every write that
returned before they started (read-your-writes).

Every method validates its whole input before changing anything: a bad argument raises a
subclass of :class:`~hivemem.pool.errors.InvalidInput` and leaves the memory as it was.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from hivemem.agents.access import AccessTracker
from hivemem.agents.builder import RecordBuilder
from hivemem.agents.context import BuiltContext, GroupBy, build_context, estimate_tokens
from hivemem.agents.directory import StoreDirectory
from hivemem.agents.embedding import shared_embedder
from hivemem.agents.inputs import (
    MemoryInput,
    check_count,
    check_flag,
    check_rows,
    items_of,
)
from hivemem.agents.ranking import SearchHit
from hivemem.agents.reading import FilterArg, Reader
from hivemem.agents.removal import Remover
from hivemem.agents.scoping import optional_scope, resolve_scope
from hivemem.agents.search import Searcher
from hivemem.agents.search_config import SearchConfig
from hivemem.agents.sparse import Bm25Encoder
from hivemem.agents.stats import MemoryStats
from hivemem.agents.superseding import Superseder
from hivemem.agents.write_path import WritePath
from hivemem.pool.adapters.edge_index import EdgeIndex
from hivemem.pool.enums import Zone
from hivemem.pool.errors import InvalidInput, MemoryClosed
from hivemem.pool.ids import check_record_id, check_scope_id
from hivemem.pool.ports import (
    Embedder,
    LocalIndex,
    SparseEncoder,
    Vector,
    WriteJournal,
    WriteObserver,
)
from hivemem.pool.records import MemoryRecord, Scope, Tombstone, check_text, utc_now
from hivemem.pool.settings import HivememSettings
from hivemem.security.classifier import Classifier

_LIST_LIMIT_MAX = 100_000


class HierarchicalMemory:
    """One agent's memory, persisted under ``path``. Use as a context manager or call close()."""

    def __init__(
        self,
        path: Path | str,
        *,
        settings: HivememSettings | None = None,
        embedder: Embedder | None = None,
        sparse: SparseEncoder | None = None,
        index: LocalIndex | None = None,
        clock: Callable[[], datetime] = utc_now,
        owner: str | None = None,
        wrap_index: Callable[[LocalIndex], LocalIndex] | None = None,
        write_gate: Callable[[Zone, Sequence[str]], None] | None = None,
        read_gate: Callable[[Zone, Sequence[str]], None] | None = None,
    ) -> None:
        """``wrap_index`` wraps the index once it is open (the pool seals content with it:
        :class:`hivemem.security.sealed_index.SealedIndex`). ``write_gate(zone, compartments)``
        raises for a zone (or compartments) this memory may not write in (the pool's zone
        policy, the agent's clearance and compartments);
        it is asked for every new record and version before anything is written.
        ``read_gate(zone, compartments)`` raises for a record this memory may not hold (the
        agent's clearance and compartments); :meth:`receive` asks it for every record."""
        self.settings = settings or HivememSettings()
        #: The agent this memory belongs to, when it is a pool agent's (see supersede).
        self.owner = owner
        self.path = Path(path)
        self._embedder = embedder or shared_embedder(
            self.settings.embedding, self.settings.data_dir
        )
        self._sparse = sparse or Bm25Encoder()
        self._directory = StoreDirectory(
            self.path, model_id=self._embedder.model_id, dim=self._embedder.dim
        )
        try:
            self._index = index or EdgeIndex(self.path, dim=self._embedder.dim)
            if wrap_index is not None:
                self._index = wrap_index(self._index)
        except Exception:
            self._directory.release()
            raise
        self._closed = False
        self._read_gate = read_gate
        sensitivity = self.settings.security.sensitivity
        self._builder = RecordBuilder(
            self._embedder,
            self._sparse,
            self.settings.memory,
            Classifier(sensitivity) if sensitivity.enabled else None,
            write_gate,
        )
        self._writes = WritePath(
            self._index, self._builder, self.settings.memory, clock, self._check_open
        )
        self._searcher = Searcher(
            self._index, self._embedder, self._sparse, self._writes.neighbourhoods
        )
        self._access = AccessTracker(self._index, self._writes.tiers, self._writes.lock)
        self._superseder = Superseder(
            self._index, self._builder, self._writes, clock, self._check_open
        )
        self._remover = Remover(self._index, self._writes, clock)
        self._reader = Reader(self._index, self._searcher, self._access, clock)

    def observe(self, observer: WriteObserver, *, journal: WriteJournal | None = None) -> None:
        """Tell ``observer`` of every later write, before the write is acknowledged. With
        ``journal`` (the pool agent's outbox), every write is noted there before the index
        changes, and what a killed process left noted is finished now: the records it indexed
        are told, its removals told and applied (see :mod:`hivemem.agents.write_ahead`)."""
        self._writes.observe(observer, journal)

    def hold_writes(self) -> threading.RLock:
        """The lock every write holds: take it to change the index underneath without racing
        a write (re-sealing content after a key rotation)."""
        return self._writes.lock

    # -- lifecycle ------------------------------------------------------------------------------

    def __enter__(self) -> HierarchicalMemory:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _check_open(self) -> None:
        """Raises MemoryClosed after :meth:`close`, StoreLocked in a process forked from the one
        that opened the memory."""
        if self._closed:
            raise MemoryClosed("this memory is closed")
        self._directory.check_owner()

    def flush(self) -> None:
        """Write buffered access counts; every acknowledged write is already durable."""
        self._check_open()
        self._access.flush()

    def close(self) -> None:
        """Flush and release the directory; idempotent. In a process forked from the one that
        opened it, does nothing: the memory is that process's."""
        if self._directory.forked:
            return
        if not self._closed:
            # Before the write lock: the access writer takes that lock for each chunk it writes.
            self._access.close()
        with self._writes.lock:
            if self._closed:
                return
            self._writes.close()
            self._closed = True
            self._index.close()
            self._directory.release()

    # -- writes ---------------------------------------------------------------------------------

    def add(
        self,
        content: str,
        *,
        scope: Scope | dict[str, Any] | None = None,
        user_id: str | None = None,
        session_id: str | None = None,
        agent_id: str | None = None,
        run_id: str | None = None,
        **fields: Any,
    ) -> MemoryRecord:
        """Add one memory and return it (with its id). ``fields`` are those of MemoryInput."""
        item = MemoryInput(content=content, **fields)
        target = resolve_scope(scope, user_id, session_id, agent_id, run_id)
        return self.add_many([item], scope=target, progress=False)[0]

    def add_many(
        self,
        items: Iterable[MemoryInput | dict[str, Any] | str],
        *,
        scope: Scope | dict[str, Any] | None = None,
        user_id: str | None = None,
        session_id: str | None = None,
        agent_id: str | None = None,
        run_id: str | None = None,
        progress: bool | None = None,
    ) -> list[MemoryRecord]:
        """Add a batch; ``scope``/ids apply to items that have none. Every item is validated
        before anything is written (chunks are embedded as soon as they are validated; after a
        bad item that work is dropped). The returned records carry their sparse terms but not
        their dense vectors (``get(id, with_vectors=True)`` has them): a batch of 100,000
        would otherwise hold ~1 GB of Python floats. A progress bar shows when ``progress`` is
        true, or when it is None and the batch is longer than ``memory.progress_threshold``.
        A batch of ``memory.compact_after`` records or more is followed by :meth:`compact`."""
        self._check_open()
        items = items_of(items, object, field="items")
        common = optional_scope(scope, user_id, session_id, agent_id, run_id)
        stored = self._writes.add(items, common, progress)
        if 0 < self.settings.memory.compact_after <= len(stored):
            self.compact()
        return stored

    def compact(self) -> bool:
        """Reorganise the index for faster searches: what was added since the last compaction
        becomes an immutable segment, which answers filtered lookups faster (at 100k records a
        filtered hybrid lookup took 1.3 ms against 1.9). True when anything changed. It takes
        ~10 s per 100,000 records not yet compacted, during which this process waits (Qdrant
        Edge holds the GIL). With ``memory.compact_after`` set, an ``add_many`` of that many
        records or more runs it by itself. Once compacted, every delete, forget or received
        tombstone rewrites the immutable segment that held the removed records (see
        :meth:`EdgeIndex.purge`): up to the same ~10 s per 100,000 records."""
        self._check_open()
        return self._index.compact()

    def supersede(self, record_id: str, content: str, **changes: Any) -> MemoryRecord:
        """Replace a current record by a new version (new id, new content, re-embedded) and
        return it. Unnamed fields are inherited, except that a new version of a record another
        agent shared is scoped to this memory's ``owner`` agent (it wrote it). Raises
        MemoryNotFound, SupersessionConflict when the record is no longer current, and
        InvalidInput for a version of another user, level, zone or compartments than the record's
        (asked, or the zone the classifier lifts ``content`` to): it inherits the record's
        labels, and receivers refuse a version that moves its record."""
        self._check_open()
        return self._superseder.supersede(record_id, content, changes, owner=self.owner)

    def delete(self, record_id: str) -> list[str]:
        """Delete a memory and every version of it: each becomes a tombstone (content and vectors
        destroyed). Returns the ids deleted; raises MemoryNotFound."""
        self._check_open()
        return self._remover.delete(record_id)

    def forget(
        self,
        *,
        scope: Scope | dict[str, Any] | None = None,
        user_id: str | None = None,
        session_id: str | None = None,
        agent_id: str | None = None,
        run_id: str | None = None,
    ) -> int:
        """Delete every record inside a scope (a user, a session of a user...): each becomes a
        tombstone. Returns how many records were deleted."""
        self._check_open()
        return self._remover.forget(resolve_scope(scope, user_id, session_id, agent_id, run_id))

    def expire(self, zone: Zone, recorded_before: datetime) -> int:
        """Delete every record of ``zone`` recorded before ``recorded_before`` (a zone's
        retention): each becomes a tombstone. Returns how many were deleted."""
        self._check_open()
        return self._remover.expire(zone, recorded_before)

    def clear(self) -> None:
        """Remove every record and tombstone of this memory (here only: unlike delete and
        forget, clearing is not sent to other agents)."""
        self._check_open()
        self._remover.clear()

    def end_session(self, *, user_id: str, session_id: str) -> list[MemoryRecord]:
        """Close a session: its current memories with importance ≥ ``bubble_importance`` are
        promoted to user scope (a new version without session and run, same vectors, in
        LONG_TERM). Returns the promoted versions. InvalidIdentifier (nothing changed) when
        ``user_id`` or ``session_id`` is no id: ``session_id=None`` would match every memory
        of the user outside a session."""
        self._check_open()
        check_scope_id(user_id, field="user_id")
        check_scope_id(session_id, field="session_id")
        bubble_importance = self.settings.memory.tiers.bubble_importance
        return self._superseder.end_session(
            user_id, session_id, bubble_importance, owner=self.owner
        )

    def receive(
        self,
        records: Sequence[MemoryRecord],
        tombstones: Sequence[Tombstone] = (),
        *,
        senders: Sequence[str],
        dense: Sequence[Vector | None] | None = None,
    ) -> list[MemoryRecord]:
        """Apply records and tombstones other agents sent (through the pool): ``senders[i]``
        sent ``records[i]``, and the stored copy says so in ``received_from``. Records carry
        their vectors (or ``dense`` has them, a row per record, which spares building Python
        lists): nothing is embedded. They land in SHORT_TERM (LONG_TERM when important; see
        :func:`hivemem.agents.tiers.received_tier`). Idempotent: a record already here, or
        deleted here, is skipped; a tombstone replaces its record. New versions are placed in
        their chains (:func:`hivemem.agents.versions.merge`). Returns the records newly stored.
        Observers are not told: received writes are not sent on. InvalidInput (nothing
        stored) when ``senders`` or ``dense`` do not hold one entry per record, a sender is no
        id (the scope ids' rule: an import may name a record's writer by its scope's agent), or
        a vector has not the embedder's dimension (a dense row: or is not finite floats);
        ClearanceDenied or CompartmentDenied (nothing stored) for a record this memory may
        not hold (its ``read_gate``)."""
        self._check_open()
        records = items_of(records, MemoryRecord, field="records")
        tombstones = items_of(tombstones, Tombstone, field="tombstones")
        senders = items_of(senders, str, field="senders")
        if len(senders) != len(records) or (dense is not None and len(dense) != len(records)):
            raise InvalidInput("senders and dense need one entry per record", field="senders")
        if self._read_gate is not None:
            for record in records:
                self._read_gate(record.zone, record.compartments)
        for sender in set(senders):  # kept in received_from, which filters take as a scope id
            check_scope_id(sender, field="senders")
        rows = dense if dense is not None else [None] * len(records)
        check_rows(list(records), list(rows), dim=self._embedder.dim, field="dense")
        return self._writes.receive(records, tombstones, senders, rows)

    # -- reads ----------------------------------------------------------------------------------

    def holds(self, record_ids: Sequence[str]) -> list[str]:
        """The ids among ``record_ids`` of records stored here (current or superseded, not
        deleted), in the order given; nothing is opened or counted as accessed. InvalidInput
        for a bad id."""
        self._check_open()
        given = items_of(record_ids, str, field="record_ids")
        ids = [check_record_id(i, field="record_ids") for i in given]
        present = self._index.presence(ids)
        return [i for i in ids if present.get(i) is False]

    def get(self, record_id: str, *, with_vectors: bool = False) -> MemoryRecord:
        """The record ``record_id`` (current or superseded); raises MemoryNotFound."""
        self._check_open()
        return self._reader.get(record_id, with_vectors=with_vectors)

    def get_history(self, record_id: str) -> list[MemoryRecord]:
        """Every surviving version of the record, oldest first; raises MemoryNotFound."""
        self._check_open()
        return self._reader.history(record_id)

    def list_memories(
        self,
        *,
        scope: Scope | dict[str, Any] | None = None,
        user_id: str | None = None,
        session_id: str | None = None,
        agent_id: str | None = None,
        run_id: str | None = None,
        filter: FilterArg = None,
        as_of: datetime | None = None,
        include_superseded: bool = False,
        exact_scope: bool = False,
        limit: int = 100,
    ) -> list[MemoryRecord]:
        """Records visible from a scope, newest first (by ``recorded_at``), at most ``limit``."""
        self._check_open()
        check_count(limit, field="limit", low=1, high=_LIST_LIMIT_MAX)
        target = resolve_scope(scope, user_id, session_id, agent_id, run_id)
        return self._reader.list_memories(
            target,
            filter,
            as_of,
            include_superseded=check_flag(include_superseded, field="include_superseded"),
            exact=check_flag(exact_scope, field="exact_scope"),
        )[:limit]

    def search(
        self,
        query: str,
        *,
        scope: Scope | dict[str, Any] | None = None,
        user_id: str | None = None,
        session_id: str | None = None,
        agent_id: str | None = None,
        run_id: str | None = None,
        filter: FilterArg = None,
        config: SearchConfig | str | None = None,
        as_of: datetime | None = None,
        **overrides: Any,
    ) -> list[SearchHit]:
        """Memories relevant to ``query`` visible from the scope, best first.

        ``config`` is a SearchConfig or a preset name (default: ``memory.search_preset``);
        ``overrides`` change single fields of it (``top_k=5``, ``min_similarity=0.3``,
        ``include_superseded=True``, ``exact_scope=True``...). ``as_of`` time-travels: the
        records that were recorded, valid and not yet superseded at that instant.
        """
        self._check_open()
        if not isinstance(query, str) or not query.strip():
            raise InvalidInput("query must be non-empty text", field="query")
        check_text(query, field="query", error=InvalidInput)
        target = resolve_scope(scope, user_id, session_id, agent_id, run_id)
        default = self.settings.memory.search_preset
        return self._reader.search(
            query, target, filter, config, as_of, overrides=overrides, default_preset=default
        )

    def build_context(
        self,
        query: str,
        *,
        token_budget: int = 800,
        group_by: GroupBy = "level",
        count_tokens: Callable[[str], int] | None = None,
        **search_args: Any,
    ) -> BuiltContext:
        """The memories relevant to ``query`` as a prompt section within ``token_budget``
        tokens, grouped by level or by scope. ``search_args`` are those of :meth:`search`."""
        check_count(token_budget, field="token_budget", low=1, high=10**9)
        if group_by not in ("level", "scope"):
            raise InvalidInput("group_by is 'level' or 'scope'", field="group_by")
        if count_tokens is not None and not callable(count_tokens):
            raise InvalidInput("count_tokens must be a function of text", field="count_tokens")
        search_args.setdefault("top_k", 50)
        hits = self.search(query, **search_args)
        return build_context(
            hits,
            token_budget=token_budget,
            group_by=group_by,
            count_tokens=count_tokens or estimate_tokens,
        )

    def stats(
        self,
        *,
        scope: Scope | dict[str, Any] | None = None,
        user_id: str | None = None,
        session_id: str | None = None,
        agent_id: str | None = None,
        run_id: str | None = None,
    ) -> MemoryStats:
        """Counts by level, tier, category, zone and scope (of one scope, or of everything when
        no scope is given) and the disk size of the whole memory."""
        self._check_open()
        target = optional_scope(scope, user_id, session_id, agent_id, run_id)
        return self._reader.stats(target)
