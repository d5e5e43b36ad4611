"""``HierarchicalMemory``: one agent's fast, local, persistent memory.

A facade: validation and vectors come from :mod:`hivemem.agents.builder`, search from
:mod:`hivemem.agents.search`, tiers from :mod:`hivemem.agents.tiers`, version chains from
:mod:`hivemem.agents.versions`; records live in a :class:`~hivemem.pool.ports.LocalIndex`
(Qdrant Edge by default) under the persist directory, so a new process opening the same
directory sees everything.

Concurrency: safe to share between threads. Writes (add, supersede, delete, forget, clear, tier
moves) are serialised by one lock; searches run concurrently with them and see every write that
returned before they started (read-your-writes).

Every method validates its whole input before changing anything: a bad argument raises a
subclass of :class:`~hivemem.pool.errors.InvalidInput` and leaves the memory as it was.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from rich.progress import Progress

from hivemem.agents import versions
from hivemem.agents.access import AccessTracker
from hivemem.agents.builder import RecordBuilder
from hivemem.agents.context import BuiltContext, GroupBy, build_context, estimate_tokens
from hivemem.agents.directory import StoreDirectory
from hivemem.agents.embedding import shared_embedder
from hivemem.agents.embedding_queue import EmbeddingQueue
from hivemem.agents.inputs import MemoryInput, as_input, batch_of, check_count, check_time
from hivemem.agents.ranking import SearchHit
from hivemem.agents.scoping import optional_scope, owned_by, resolve_scope
from hivemem.agents.search import Searcher, visible
from hivemem.agents.search_config import SearchConfig, preset
from hivemem.agents.sessions import NeighbourhoodCache, SessionChains, bubble_up
from hivemem.agents.sparse import Bm25Encoder
from hivemem.agents.stats import MemoryStats, compute_stats
from hivemem.agents.tiers import TierManager, received_tier
from hivemem.pool.adapters.edge_index import EdgeIndex
from hivemem.pool.enums import Tier, Zone, checked_zone
from hivemem.pool.errors import HivememError, InvalidInput, InvalidSearchConfig, MemoryClosed
from hivemem.pool.filters import And, Cond, MemoryFilter, parse_filter
from hivemem.pool.ids import check_record_id, check_scope_id
from hivemem.pool.ports import Embedder, LocalIndex, SparseEncoder, Vector, WriteObserver
from hivemem.pool.records import MemoryRecord, Scope, Tombstone, check_text, utc_now
from hivemem.pool.settings import HivememSettings
from hivemem.security.classifier import Classifier

#: Records indexed per hold of the write lock in a bulk add (the observers are told once per
#: embedding batch, with its last chunk: see HierarchicalMemory._index_chunk).
_CHUNK = 256
#: Texts per embedding call in a bulk add: longer calls pad less (texts are sorted by length
#: within a call), measured 3-8 % faster bulk adds than 256 on the latency benchmark's texts.
_EMBED_CHUNK = 1024
_LIST_LIMIT_MAX = 100_000
FilterArg = MemoryFilter | dict[str, Any] | None


def _input(item: MemoryInput | dict[str, Any] | str, position: int) -> MemoryInput:
    """:func:`as_input`, its error naming the item's place in the batch."""
    try:
        return as_input(item)
    except InvalidInput as error:
        raise type(error)(f"item {position}: {error}", field=error.field) from None


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
    ) -> None:
        """``wrap_index`` wraps the index once it is open (the pool seals content with it:
        :class:`hivemem.security.sealed_index.SealedIndex`). ``write_gate(zone, compartments)``
        raises for a zone (or compartments) this memory may not write in (the pool's zone
        policy, the agent's clearance and compartments);
        it is asked for every new record and version before anything is written."""
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
        self._clock = clock
        self._write_lock = threading.RLock()
        self._closed = False
        sensitivity = self.settings.security.sensitivity
        self._builder = RecordBuilder(
            self._embedder,
            self._sparse,
            self.settings.memory,
            Classifier(sensitivity) if sensitivity.enabled else None,
            write_gate,
        )
        self._neighbourhoods = NeighbourhoodCache(self._index)
        self._searcher = Searcher(self._index, self._embedder, self._sparse, self._neighbourhoods)
        self._tiers = TierManager(self._index, self.settings.memory.tiers)
        self._access = AccessTracker(self._index, self._tiers)
        self._sessions = SessionChains(self._index)
        self._embedding_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hivemem-embed")
        self._observers: list[WriteObserver] = []

    def observe(self, observer: WriteObserver) -> None:
        """Tell ``observer`` of every later write, before the write is acknowledged."""
        with self._write_lock:
            self._observers.append(observer)

    def hold_writes(self) -> threading.RLock:
        """The lock every write holds: take it to change the index underneath without racing
        a write (re-sealing content after a key rotation)."""
        return self._write_lock

    def _wrote(self, records: Sequence[MemoryRecord], dense: Vector | None = None) -> None:
        for observer in self._observers:
            observer.records_written(records, dense)

    def _deleted(self, tombstones: Sequence[Tombstone]) -> None:
        for observer in self._observers:
            observer.tombstones_written(tombstones)

    # -- lifecycle ------------------------------------------------------------------------------

    def __enter__(self) -> HierarchicalMemory:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise MemoryClosed("this memory is closed")

    def flush(self) -> None:
        """Write buffered access counts; every acknowledged write is already durable."""
        self._check_open()
        self._access.flush()

    def close(self) -> None:
        """Flush and release the directory; idempotent."""
        with self._write_lock:
            if self._closed:
                return
            self._access.close()
            self._embedding_pool.shutdown(wait=True)
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
        items = batch_of(items)
        common = optional_scope(scope, user_id, session_id, agent_id, run_id)
        now = self._clock()
        embedding = EmbeddingQueue(self._embedding_pool, self._builder.embed)
        try:
            for start in range(0, len(items), _EMBED_CHUNK):
                embedding.put(self._validated(items, start, start + _EMBED_CHUNK, common, now))
            show = (
                progress
                if progress is not None
                else len(items) > self.settings.memory.progress_threshold
            )
            stored: list[MemoryRecord] = []
            with Progress(disable=not show, transient=True) as bar:
                task = bar.add_task("adding memories", total=len(items))
                for records, dense in embedding.results():
                    stored.extend(self._index_batch(records, dense, lambda n: bar.advance(task, n)))
        finally:
            embedding.cancel()
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

    def _validated(
        self,
        items: Sequence[MemoryInput | dict[str, Any] | str],
        start: int,
        stop: int,
        common: Scope | None,
        now: datetime,
    ) -> list[MemoryRecord]:
        """Records of ``items[start:stop]`` (every item as an input first, then the records). A
        bad item raises the error the whole batch gives: validated again as one, every input
        comes before every record and items are named by their place in the batch."""
        part = items[start:stop]
        try:
            inputs = [_input(item, position) for position, item in enumerate(part, start)]
            return self._builder.validate(inputs, common, now)
        except HivememError:
            if start == 0 and stop >= len(items):
                raise
            self._validated(items, 0, len(items), common, now)
            raise

    def _index_batch(
        self, records: list[MemoryRecord], dense: Vector, advance: Callable[[int], None]
    ) -> list[MemoryRecord]:
        """Index an embedding batch chunk by chunk; the observers hear of the whole batch at
        once, with its last chunk (see :meth:`_index_chunk`) or, when a chunk fails, of the
        chunks indexed before it (what is in the index is always shared)."""
        indexed: list[MemoryRecord] = []
        announced = False
        try:
            for start in range(0, len(records), _CHUNK):
                stop = min(start + _CHUNK, len(records))
                last = stop == len(records)
                chunk = self._index_chunk(
                    records[start:stop],
                    dense[start:stop],
                    announce=(indexed, dense[:stop]) if last else None,
                )
                announced = last
                indexed.extend(chunk)
                advance(len(chunk))
        except BaseException:
            if indexed and not announced:
                with self._write_lock:
                    self._wrote(indexed, dense[: len(indexed)])
            raise
        return indexed

    def _index_chunk(
        self,
        chunk: list[MemoryRecord],
        dense: Vector,
        *,
        announce: tuple[list[MemoryRecord], Vector] | None,
    ) -> list[MemoryRecord]:
        """Index one chunk under the write lock. ``announce``: the chunks of this embedding
        batch indexed before (not yet told to the observers) and the batch's dense rows up to
        this chunk's end; the observers are then told of them and this chunk in one call, before
        the lock is released (one call per batch: the pool makes one message per zone and user
        of each call, so fewer, fuller messages). None: this chunk is not told yet."""
        added: dict[str, Counter[Tier]] = {}
        for record in chunk:
            added.setdefault(record.scope.user_id, Counter())[record.tier] += 1
        with self._write_lock:
            self._check_open()
            chunk = self._sessions.link(chunk)
            self._index.upsert(chunk, dense)
            self._neighbourhoods.remember(chunk)
            self._tiers.enforce(added, self._clock(), chunk)
            if announce is not None:
                earlier, rows = announce
                self._wrote([*earlier, *chunk], rows)
        return chunk

    def supersede(self, record_id: str, content: str, **changes: Any) -> MemoryRecord:
        """Replace a current record by a new version (new id, new content, re-embedded) and
        return it. Unnamed fields are inherited, except that a new version of a record another
        agent shared is scoped to this memory's ``owner`` agent (it wrote it). Raises
        MemoryNotFound, or SupersessionConflict when the record is no longer current."""
        self._check_open()
        check_record_id(record_id, field="record_id")
        old = versions.require(self._index, record_id)
        scope = old.scope
        if old.received_from is not None and scope.agent_id is not None:
            scope = scope.model_copy(update={"agent_id": self.owner})
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
        update = {"supersedes": old.id, "follows": old.follows}
        embedded, dense = self._builder.embed([draft.model_copy(update=update)])
        new = embedded[0]
        with self._write_lock:
            self._check_open()
            old = versions.require(self._index, record_id)
            versions.check_current(self._index, old)
            versions.link(self._index, old, new, now, dense)
            self._tiers.enforce({new.scope.user_id: Counter([new.tier])}, now)
            self._wrote([new], dense)
        return new

    def delete(self, record_id: str) -> list[str]:
        """Delete a memory and every version of it: each becomes a tombstone (content and vectors
        destroyed). Returns the ids deleted; raises MemoryNotFound."""
        self._check_open()
        check_record_id(record_id, field="record_id")
        with self._write_lock:
            chain = versions.chain(self._index, record_id)
            self._deleted(versions.tombstone(self._index, chain, self._clock()))
        return [r.id for r in chain]

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
        target = resolve_scope(scope, user_id, session_id, agent_id, run_id)
        with self._write_lock:
            doomed = list(self._index.scan(And(all=owned_by(target))))
            self._deleted(versions.tombstone(self._index, doomed, self._clock()))
        return len(doomed)

    def expire(self, zone: Zone, recorded_before: datetime) -> int:
        """Delete every record of ``zone`` recorded before ``recorded_before`` (a zone's
        retention): each becomes a tombstone. Returns how many were deleted."""
        self._check_open()
        where = And(
            all=[
                Cond(field="zone", op="eq", value=checked_zone(zone).value),
                Cond(field="recorded_at", op="lt", value=recorded_before),
            ]
        )
        with self._write_lock:
            doomed = list(self._index.scan(where))
            self._deleted(versions.tombstone(self._index, doomed, self._clock()))
        return len(doomed)

    def clear(self) -> None:
        """Remove every record and tombstone of this memory (here only: unlike delete and
        forget, clearing is not sent to other agents)."""
        self._check_open()
        with self._write_lock:
            ids = [r.id for r in self._index.scan(And(all=[]))]
            self._index.remove(ids)
            self._index.purge()
            self._sessions.forget()

    def end_session(self, *, user_id: str, session_id: str) -> list[MemoryRecord]:
        """Close a session: its current memories with importance ≥ ``bubble_importance`` are
        promoted to user scope (a new version without session and run, same vectors, in
        LONG_TERM). Returns the promoted versions."""
        self._check_open()
        target = resolve_scope(None, user_id, session_id)
        flt = MemoryFilter(importance_min=self.settings.memory.tiers.bubble_importance)
        with self._write_lock:
            where = visible(target, flt, exact=False, as_of=None, include_superseded=False)
            now = self._clock()
            promoted = bubble_up(self._index, where, session_id, now)
            self._tiers.enforce({user_id: Counter(r.tier for r in promoted)}, now)
            self._wrote(promoted)
        return promoted

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
        stored) when ``senders`` or ``dense`` do not hold one entry per record, or a sender is
        no id (the scope ids' rule: an import may name a record's writer by its scope's agent)."""
        self._check_open()
        if len(senders) != len(records) or (dense is not None and len(dense) != len(records)):
            raise InvalidInput("senders and dense need one entry per record", field="senders")
        for sender in set(senders):  # kept in received_from, which filters take as a scope id
            check_scope_id(sender, field="senders")
        with self._write_lock:
            self._check_open()
            present = self._index.presence([r.id for r in records])
            rows = dense if dense is not None else [None] * len(records)
            tiers = self.settings.memory.tiers
            fresh = {
                r.id: (
                    r.model_copy(
                        update={
                            "received_from": sender,
                            "tier": received_tier(r.importance, tiers),
                        }
                    ),
                    row,
                )
                for r, sender, row in zip(records, senders, rows, strict=True)
                if r.id not in present
            }
            stored = [r for r, _ in fresh.values()]
            if stored:
                self._upsert_received(list(fresh.values()))
                self._neighbourhoods.remember(stored)
                for record in stored:
                    if record.supersedes is not None:
                        versions.merge(self._index, record)
                added: dict[str, Counter[Tier]] = {}
                for record in stored:
                    added.setdefault(record.scope.user_id, Counter())[record.tier] += 1
                self._tiers.enforce(added, self._clock())
            rightful = versions.rightful(self._index, tombstones)
            if rightful:
                self._index.put_tombstones(rightful)
                self._index.purge()
        return stored

    def _upsert_received(self, pairs: list[tuple[MemoryRecord, Vector | None]]) -> None:
        with_rows = [(r, row) for r, row in pairs if row is not None]
        if with_rows:
            matrix = np.stack([row for _, row in with_rows])
            self._index.upsert([r for r, _ in with_rows], matrix)
        without = [r for r, row in pairs if row is None]
        if without:
            self._index.upsert(without)

    # -- reads ----------------------------------------------------------------------------------

    def get(self, record_id: str, *, with_vectors: bool = False) -> MemoryRecord:
        """The record ``record_id`` (current or superseded); raises MemoryNotFound."""
        self._check_open()
        check_record_id(record_id, field="record_id")
        record = versions.require(self._index, record_id, with_vectors=with_vectors)
        self._access.touch([record.id], self._clock())
        return record

    def get_history(self, record_id: str) -> list[MemoryRecord]:
        """Every surviving version of the record, oldest first; raises MemoryNotFound."""
        self._check_open()
        check_record_id(record_id, field="record_id")
        return versions.chain(self._index, record_id)

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
        where = visible(
            target,
            parse_filter(filter),
            exact=exact_scope,
            as_of=check_time(as_of, field="as_of"),
            include_superseded=include_superseded,
        )
        found = sorted(self._index.scan(where), key=lambda r: (r.recorded_at, r.id), reverse=True)
        return found[:limit]

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
        chosen = self._config(config, overrides)
        flt = parse_filter(filter)
        when = check_time(as_of, field="as_of")
        now = self._clock()
        hits = self._searcher.search(query, target, chosen, flt, as_of=when, now=now)
        if chosen.track_access and hits:
            self._access.touch([h.record.id for h in hits], now)
        return hits

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
        return compute_stats(self._index, [] if target is None else owned_by(target))

    def _config(self, config: SearchConfig | str | None, overrides: dict[str, Any]) -> SearchConfig:
        if config is None:
            config = self.settings.memory.search_preset
        if isinstance(config, Mapping):
            config = SearchConfig.model_validate(config)
        if not isinstance(config, str | SearchConfig):
            raise InvalidSearchConfig("config is a SearchConfig, its fields or a preset's name")
        base = preset(config) if isinstance(config, str) else config
        return base.with_(**overrides) if overrides else base
