"""How records get into one agent's memory: :class:`WritePath`, the service behind
:class:`hivemem.agents.memory.HierarchicalMemory`'s writes."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

import numpy as np
from rich.progress import Progress

from hivemem.agents import versions
from hivemem.agents.builder import RecordBuilder
from hivemem.agents.embedding_queue import EmbeddingQueue
from hivemem.agents.inputs import MemoryInput, as_input
from hivemem.agents.sessions import NeighbourhoodCache, SessionChains
from hivemem.agents.tiers import TierManager, received_tier
from hivemem.agents.write_ahead import WriteAhead
from hivemem.pool.enums import Tier
from hivemem.pool.errors import HivememError, InvalidInput
from hivemem.pool.ports import LocalIndex, Vector, WriteJournal, WriteObserver
from hivemem.pool.records import MemoryRecord, Scope, Tombstone
from hivemem.pool.settings import MemorySettings

#: Records indexed per hold of the write lock in a bulk add (the observers are told once per
#: embedding batch, with its last chunk: see WritePath._index_chunk).
_CHUNK = 256
#: Texts per embedding call in a bulk add: longer calls pad less (texts are sorted by length
#: within a call), measured 3-8 % faster bulk adds than 256 on the latency benchmark's texts.
_EMBED_CHUNK = 1024


def _input(item: MemoryInput | dict[str, Any] | str, position: int) -> MemoryInput:
    """:func:`as_input`, its error naming the item's place in the batch."""
    try:
        return as_input(item)
    except InvalidInput as error:
        raise type(error)(f"item {position}: {error}", field=error.field) from None


def _per_user(records: Sequence[MemoryRecord]) -> dict[str, Counter[Tier]]:
    """How many of ``records`` each user gained, by tier (what the tier limits are checked on)."""
    added: dict[str, Counter[Tier]] = {}
    for record in records:
        added.setdefault(record.scope.user_id, Counter())[record.tier] += 1
    return added


class WritePath:
    """Every write of a memory holds :attr:`lock`, and the observers (the pool's sender) are
    told of it before the lock is released: what is in the index is always shared, in order.
    With a journal, each write is noted there first (:attr:`ahead`), so that this holds after
    the process is killed too. Bulk adds embed ahead of indexing on the memory's one embedding
    thread.

    ``check_open`` raises when the memory is closed; it is asked again under the lock."""

    def __init__(
        self,
        index: LocalIndex,
        builder: RecordBuilder,
        settings: MemorySettings,
        clock: Callable[[], datetime],
        check_open: Callable[[], None],
    ) -> None:
        self.lock = threading.RLock()
        self.sessions = SessionChains(index)
        self.neighbourhoods = NeighbourhoodCache(index)
        self.tiers = TierManager(index, settings.tiers)
        self._index = index
        self._builder = builder
        self._settings = settings
        self._clock = clock
        self._check_open = check_open
        self.ahead = WriteAhead(index)
        self._embedding = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hivemem-embed")

    def close(self) -> None:
        """Wait for the embedding thread (a bulk add's chunks ahead) and stop it."""
        self._embedding.shutdown(wait=True)

    def observe(self, observer: WriteObserver, journal: WriteJournal | None = None) -> None:
        """See :meth:`WriteAhead.observe` (what an earlier process left noted is finished
        before any new write)."""
        with self.lock:
            self.ahead.observe(observer, journal)

    # -- bulk add -------------------------------------------------------------------------------

    def add(
        self,
        items: Sequence[MemoryInput | dict[str, Any] | str],
        common: Scope | None,
        progress: bool | None,
    ) -> list[MemoryRecord]:
        """Validate, embed and index ``items`` (see HierarchicalMemory.add_many)."""
        now = self._clock()
        embedding = EmbeddingQueue(self._embedding, self._builder.embed)
        try:
            for start in range(0, len(items), _EMBED_CHUNK):
                embedding.put(self._validated(items, start, start + _EMBED_CHUNK, common, now))
            if progress is None:
                progress = len(items) > self._settings.progress_threshold
            stored: list[MemoryRecord] = []
            with Progress(disable=not progress, transient=True) as bar:
                task = bar.add_task("adding memories", total=len(items))
                for records, dense in embedding.results():
                    stored.extend(self._index_batch(records, dense, lambda n: bar.advance(task, n)))
        finally:
            embedding.cancel()
        return stored

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
        once, with its last chunk, under the same hold of the lock (one call per batch: the pool
        makes one message per zone and user of each call, so fewer, fuller messages), or, when
        a chunk fails, of the chunks indexed before it (what is in the index is always shared).
        The batch is noted first: when the process is killed before the observers heard of it,
        the next one tells them what reached the index. When telling fails, see :meth:`tell`."""
        with self.lock:  # open: the journal (the agent's outbox) closes after the memory
            self._check_open()
            entry = self.ahead.note_added([r.id for r in records])
        indexed: list[MemoryRecord] = []
        told = False
        try:
            for start in range(0, len(records), _CHUNK):
                stop = min(start + _CHUNK, len(records))
                with self.lock:
                    indexed.extend(self._index_chunk(records[start:stop], dense[start:stop]))
                    if stop == len(records):
                        told = True
                        self.tell(indexed, dense[:stop], entry)
                advance(stop - start)
        except BaseException:
            if indexed and not told:
                with self.lock:
                    self.tell(indexed, dense[: len(indexed)], entry)
            raise
        self.ahead.cross_off(entry)
        return indexed

    def _index_chunk(self, chunk: list[MemoryRecord], dense: Vector) -> list[MemoryRecord]:
        """Index one chunk (hold the lock); the chunk as indexed (linked in its sessions)."""
        added = _per_user(chunk)
        self._check_open()
        chunk = self.sessions.link(chunk)
        self._index.upsert(chunk, dense)
        self.neighbourhoods.remember(chunk)
        self.tiers.enforce(added, self._clock(), chunk)
        return chunk

    def write_versions(
        self,
        pairs: Sequence[tuple[MemoryRecord, MemoryRecord]],
        now: datetime,
        dense: Vector | None = None,
    ) -> None:
        """Store each new version of ``pairs`` (record, its new version), mark the record
        superseded by it, and tell the observers, under one write-ahead note (hold the lock).
        ``dense``: the vector of the one new version, as a 1-row matrix, when it carries none.
        Undone as :meth:`tell` says when telling fails."""
        if dense is not None and len(pairs) != 1:
            raise InvalidInput("dense holds the vector of one new version", field="dense")
        new = [n for _, n in pairs]
        entry = self.ahead.note_added([r.id for r in new])
        for record, version in pairs:
            versions.link(self._index, record, version, now, dense)
        self.tiers.enforce(_per_user(new), now)
        self.tell(new, dense, entry, superseded=[record for record, _ in pairs])
        self.ahead.cross_off(entry)

    def tell(
        self,
        records: list[MemoryRecord],
        rows: Vector | None,
        entry: int | None,
        *,
        superseded: Sequence[MemoryRecord] = (),
    ) -> None:
        """Tell the observers of ``records``, just indexed (hold the lock). When that raises
        (the pool's sender could not encode them, or the outbox refused them: its put is all or
        none, so it took nothing), they are taken out of the index again, the records they
        superseded (``superseded``, as they were before) current again, and their note
        (``entry``) crossed off before the error is raised: the caller is told the write failed,
        so none of it may stay here unshared, nor be finished by a later attach. Tier moves the
        records caused meanwhile stay. A process killed meanwhile leaves the note, and the next
        attach tells what reached the index."""
        try:
            self.ahead.wrote(records, rows)
        except Exception:
            self._index.remove([r.id for r in records])
            self._index.purge()
            versions.restore(self._index, superseded)
            self.sessions.forget()
            self.tiers.invalidate()
            self.ahead.cross_off(entry)
            raise

    # -- what other agents sent -----------------------------------------------------------------

    def receive(
        self,
        records: Sequence[MemoryRecord],
        tombstones: Sequence[Tombstone],
        senders: Sequence[str],
        dense: Sequence[Vector | None],
    ) -> list[MemoryRecord]:
        """Store the records not here yet (see HierarchicalMemory.receive, which checks the
        arguments) and apply the tombstones that may act here. Observers are not told."""
        with self.lock:
            self._check_open()
            present = self._index.presence([r.id for r in records])
            tiers = self._settings.tiers
            fresh = {
                r.id: (
                    r.model_copy(
                        update={"received_from": sender, "tier": received_tier(r.importance, tiers)}
                    ),
                    row,
                )
                for r, sender, row in zip(records, senders, dense, strict=True)
                if r.id not in present
            }
            stored = [r for r, _ in fresh.values()]
            if stored:
                self._upsert_received(list(fresh.values()))
                self.neighbourhoods.remember(stored)
                for record in stored:
                    if record.supersedes is not None:
                        versions.merge(self._index, record)
                self.tiers.enforce(_per_user(stored), self._clock())
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
