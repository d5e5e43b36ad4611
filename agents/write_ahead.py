"""The write-ahead record of a memory's shared writes: :class:`WriteAhead`.

A pool agent's memory must share what its index holds, even when its process is killed in the
middle of a write (no ``except`` or ``finally`` runs then). So each write is first noted in a
:class:`~hivemem.pool.ports.WriteJournal` (the agent's outbox), durably, and crossed off once the
observers (the pool's sender, which commits the messages to the outbox) were told of it:

- new records (add, add_many, supersede, end_session): noted by id, then indexed, then told;
- removals (delete, forget, expire): noted by id, told (the tombstones are in the outbox), then
  tombstoned here, so that no record is gone here that the pool will not hear of.

The next process to attach the memory finishes every note left (:meth:`WriteAhead.recover`): the
noted records found in the index are told again (with their version links completed), the noted
removals are told again and applied here. Telling twice is harmless: receivers skip a record
they hold, and a tombstone received again is the same deletion. A memory without a journal (not
attached to a pool) notes nothing: it has no one to tell.

When telling raises in a write (the sender could not encode the messages, the outbox refused
them), the write is undone and its note crossed off: new records leave the index again, and
the records new versions replaced are current again
(:meth:`hivemem.agents.write_path.WritePath.tell`), a removal changes nothing here
(:meth:`WriteAhead.remove`); the caller gets the error. A note that fails again at an attach is
kept for the next one, but for a noted record that fits in no pool message (``MessageTooLarge``:
only a record stored before metadata was bounded can be that large, and the sender splits any
batch into messages that fit): it stays here unshared, logged (``write_recovery_unsendable``),
the rest of its note is told, and the note goes, rather than fail at every attach.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Literal

import structlog

from hivemem.agents import versions
from hivemem.pool.errors import MessageTooLarge
from hivemem.pool.failures import described
from hivemem.pool.ports import Intent, LocalIndex, Vector, WriteJournal, WriteObserver
from hivemem.pool.records import MemoryRecord, Tombstone

log = structlog.get_logger(__name__)


class WriteAhead:
    """The observers of one memory and its journal. Callers hold the memory's write lock
    while they tell the observers (see :class:`~hivemem.agents.write_path.WritePath`)."""

    def __init__(self, index: LocalIndex) -> None:
        self._index = index
        self._observers: list[WriteObserver] = []
        self._journal: WriteJournal | None = None

    def observe(self, observer: WriteObserver, journal: WriteJournal | None) -> None:
        """Add ``observer``; with ``journal``, note later writes there and finish what an
        earlier process left noted (hold the write lock)."""
        self._observers.append(observer)
        if journal is not None:
            self._journal = journal
            self.recover()

    # -- telling --------------------------------------------------------------------------------

    def wrote(self, records: Sequence[MemoryRecord], dense: Vector | None = None) -> None:
        """Tell the observers of ``records`` (``dense``: their vectors as rows)."""
        for observer in self._observers:
            observer.records_written(records, dense)

    def deleted(self, tombstones: Sequence[Tombstone]) -> None:
        """Tell the observers of ``tombstones``."""
        for observer in self._observers:
            observer.tombstones_written(tombstones)

    # -- noting ---------------------------------------------------------------------------------

    def note_added(self, ids: Sequence[str]) -> int | None:
        """Note new records ``ids`` before they are indexed; the entry to :meth:`cross_off`
        once the observers were told of them (None: nothing noted). Left noted (the write
        raised, or the process died), the next process tells what of them reached the index."""
        return self._note("records", ids)

    def remove(self, doomed: Sequence[Tombstone], now: datetime) -> list[Tombstone]:
        """Replace the records ``doomed`` names (their tombstones) by tombstones deleted at
        ``now``: noted, told, then applied here (see the module docstring); returns the
        tombstones. When telling raises (the outbox took none of the tombstones: its put is all
        or none), nothing changed and the note goes: the caller was told the removal failed, so
        no later attach may make it. A process killed meanwhile leaves the note, and the next
        attach finishes the removal."""
        entry = self._note("tombstones", [t.id for t in doomed], now)
        tombstones = [t.model_copy(update={"deleted_at": now}) for t in doomed]
        try:
            self.deleted(tombstones)
        except BaseException:
            self.cross_off(entry)
            raise
        versions.bury(self._index, tombstones)
        self.cross_off(entry)
        return tombstones

    def _note(
        self,
        kind: Literal["records", "tombstones"],
        ids: Sequence[str],
        deleted_at: datetime | None = None,
    ) -> int | None:
        """The journal's entry for the intent; None without a journal, or nothing to note."""
        if self._journal is None or not ids:
            return None
        return self._journal.note(kind, ids, deleted_at)

    def cross_off(self, entry: int | None) -> None:
        """Drop a note whose write is done (None: nothing was noted)."""
        if self._journal is not None and entry is not None:
            self._journal.cross_off(entry)

    # -- after a crash --------------------------------------------------------------------------

    def recover(self) -> int:
        """Finish every write the journal still notes (hold the write lock); how many. One that
        fails again is logged and kept for the next process: a journal entry must never stop an
        agent from attaching."""
        if self._journal is None:
            return 0
        finished = 0
        for intent in self._journal.unfinished():
            try:
                self._finish(intent)
            except Exception as error:  # noqa: BLE001 - isolation point: the agent attaches anyway
                log.error(
                    "write_recovery_failed",
                    entry=intent.entry,
                    kind=intent.kind,
                    **described(error),
                )
                continue
            self._journal.cross_off(intent.entry)
            finished += 1
        if finished:
            log.warning("writes_recovered", intents=finished)
        return finished

    def _finish(self, intent: Intent) -> None:
        if intent.kind == "records":
            self._finish_records(intent.ids)
        else:
            self._finish_removal(intent.ids, intent.deleted_at)

    def _finish_records(self, ids: Sequence[str]) -> None:
        """Tell the observers of the noted records that reached the index (the others never
        existed), each linked in its chain first; those that fit in no message are left out,
        logged (see the module docstring)."""
        found = self._index.get(ids, with_vectors=True)
        for record in found:
            versions.complete_link(self._index, record)
        while found:
            try:
                self.wrote(found)
            except MessageTooLarge as error:
                kept = [r for r in found if r.id not in error.item_ids]
                if len(kept) == len(found):
                    raise
                log.error(
                    "write_recovery_unsendable",
                    record_ids=[r.id for r in found if r.id in error.item_ids],
                    size_bytes=error.size_bytes,
                    limit_bytes=error.limit_bytes,
                )
                found = kept
            else:
                return

    def _finish_removal(self, ids: Sequence[str], deleted_at: datetime | None) -> None:
        """Tell the observers of the noted removal again (tombstones made here already, and
        those of the records still here), then tombstone those records here."""
        live = [Tombstone.of(r, deleted_at) for r in self._index.get(ids)]
        here = {t.id for t in live}
        made = self._index.get_tombstones([i for i in ids if i not in here])
        if live or made:
            self.deleted([*live, *made])
        versions.bury(self._index, live)
