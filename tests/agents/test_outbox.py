"""The durable outbox, receive cursors and write-ahead notes (SQLite in the agent's
directory)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest

from hivemem.agents.memory import HierarchicalMemory
from hivemem.agents.outbox import FILE_NAME, Outbox
from hivemem.pool.errors import SealBroken
from hivemem.pool.ports import Intent, Vector
from hivemem.pool.records import MemoryRecord, Tombstone


def test_messages_come_out_in_order_until_removed(tmp_path: Path) -> None:
    """peek returns the oldest first and keeps them until remove."""
    outbox = Outbox(tmp_path)
    outbox.put([("zone:public", "a" * 32, b"1"), ("zone:secret", "b" * 32, b"2")])
    outbox.put([("zone:public", "c" * 32, b"3")])
    pending = outbox.peek(2)
    assert [(p.topic, p.body) for p in pending] == [("zone:public", b"1"), ("zone:secret", b"2")]
    outbox.remove([pending[0].row])
    assert [p.body for p in outbox.peek(10)] == [b"2", b"3"]
    assert len(outbox) == 2
    outbox.close()


def test_pending_messages_and_cursors_survive_reopening(tmp_path: Path) -> None:
    """What was committed is there for the next process that opens the directory."""
    outbox = Outbox(tmp_path)
    outbox.put([("zone:public", "a" * 32, b"kept")])
    outbox.set_cursor("zone:public", "epoch-1", 41)
    outbox.set_cursor("zone:public", "epoch-1", 42, b"d" * 16)
    outbox.close()
    reopened = Outbox(tmp_path, durable=True)
    assert [(p.message_id, p.body) for p in reopened.peek(5)] == [("a" * 32, b"kept")]
    assert reopened.cursor("zone:public") == ("epoch-1", 42, b"d" * 16)
    assert reopened.cursor("zone:secret") == (None, 0, None)
    reopened.close()


def test_noted_intents_survive_reopening_until_crossed_off(tmp_path: Path) -> None:
    """The write-ahead notes come back oldest first, in a new process too, until crossed off."""
    deleted_at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    outbox = Outbox(tmp_path)
    added = outbox.note("records", ["a", "b"])
    removed = outbox.note("tombstones", ["c"], deleted_at)
    outbox.close()
    reopened = Outbox(tmp_path)
    assert reopened.unfinished() == [
        Intent(entry=added, kind="records", ids=("a", "b")),
        Intent(entry=removed, kind="tombstones", ids=("c",), deleted_at=deleted_at),
    ]
    reopened.cross_off(added)
    reopened.cross_off(added)  # again: ignored
    assert [i.entry for i in reopened.unfinished()] == [removed]
    assert len(reopened) == 0  # notes are no messages
    reopened.close()


class RefusingOutbox:
    """A write observer that refuses every removal, as the pool's sender does when it cannot
    seal the tombstones; the write-ahead notes go to a real outbox."""

    def records_written(self, records: Sequence[MemoryRecord], dense: Vector | None) -> None:
        del records, dense

    def tombstones_written(self, tombstones: Sequence[Tombstone]) -> None:
        raise SealBroken(f"cannot seal {len(tombstones)} tombstones")


def test_a_removal_whose_tombstones_are_refused_changes_nothing_now_or_later(
    make_memory: Callable[..., HierarchicalMemory], tmp_path: Path
) -> None:
    """The caller is told the delete failed: the record stays here, and no note is left for a
    later attach to carry the delete out after all."""
    (tmp_path / "outbox").mkdir()
    outbox = Outbox(tmp_path / "outbox")
    memory = make_memory("refusing")
    memory.observe(RefusingOutbox(), journal=outbox)
    record = memory.add("kept after all", user_id="u1")
    with pytest.raises(SealBroken):
        memory.delete(record.id)
    assert memory.get(record.id).content == "kept after all"
    assert list(outbox.unfinished()) == []


def test_an_outbox_made_before_cursor_digests_gets_the_column(tmp_path: Path) -> None:
    """An outbox whose cursor table has no digest column (made before them) opens with one:
    its cursors read back with no digest, and new ones keep theirs."""
    old = sqlite3.connect(tmp_path / FILE_NAME)
    old.execute(
        "CREATE TABLE cursors (topic TEXT PRIMARY KEY, epoch TEXT NOT NULL, seq INTEGER NOT NULL)"
    )
    old.execute("INSERT INTO cursors VALUES ('zone:public', 'epoch-1', 7)")
    old.commit()
    old.close()
    outbox = Outbox(tmp_path)
    assert outbox.cursor("zone:public") == ("epoch-1", 7, None)
    outbox.set_cursor("zone:public", "epoch-1", 8, b"x" * 16)
    assert outbox.cursor("zone:public") == ("epoch-1", 8, b"x" * 16)
    outbox.close()
