"""The write path when telling the observers fails: nothing of the write stays behind."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import structlog

from hivemem.agents.memory import HierarchicalMemory
from hivemem.agents.outbox import Outbox
from hivemem.pool.errors import MessageTooLarge
from hivemem.pool.ports import Vector
from hivemem.pool.records import MemoryRecord, Tombstone


class RefusingObserver:
    """A WriteObserver that refuses every record whose content starts with ``refused`` as the
    pool's sender refuses one that fits in no message; records the others."""

    def __init__(self) -> None:
        self.told: list[MemoryRecord] = []

    def records_written(self, records: Sequence[MemoryRecord], dense: Vector | None) -> None:
        del dense
        refused = [r.id for r in records if r.content.startswith("refused")]
        if refused:
            raise MessageTooLarge(70_000_000, 67_108_864, refused[:1])
        self.told.extend(records)

    def tombstones_written(self, tombstones: Sequence[Tombstone]) -> None:
        del tombstones


@pytest.mark.parametrize("count", [3, 300], ids=["one-chunk", "two-chunks"])
def test_a_write_whose_telling_fails_leaves_nothing_behind(
    make_memory: Callable[..., HierarchicalMemory], tmp_path: Path, count: int
) -> None:
    """add_many raises the observer's error, and its records are gone from the index (no
    search finds them), its journal note crossed off (no later attach finishes it), and the
    next memory of the session does not follow one of them."""
    memory = make_memory()
    journal = Outbox(tmp_path)
    observer = RefusingObserver()
    memory.observe(observer, journal=journal)
    first = memory.add("the first note", user_id="u1", session_id="s1")
    items = [f"note {i} of the batch" for i in range(count - 1)] + ["refused: too large"]

    with pytest.raises(MessageTooLarge):
        memory.add_many(items, user_id="u1", session_id="s1")

    assert [r.id for r in memory.list_memories(user_id="u1", limit=1000)] == [first.id]
    assert [h.record.id for h in memory.search("note of the batch", user_id="u1")] == [first.id]
    assert journal.unfinished() == []
    after = memory.add("the next note", user_id="u1", session_id="s1")
    assert after.follows == first.id
    assert [r.id for r in observer.told] == [first.id, after.id]
    journal.close()


def test_recovery_leaves_out_a_noted_record_that_fits_in_no_message(
    make_memory: Callable[..., HierarchicalMemory], tmp_path: Path
) -> None:
    """A note left by a killed write whose records include one that fits in no message: at the
    next attach the others are told, the unsendable one is logged and stays here, and the note
    is crossed off rather than failing at every attach."""
    memory = make_memory()
    kept, refused = memory.add_many(["a kept note", "refused: too large"], user_id="u1")
    journal = Outbox(tmp_path)
    journal.note("records", [kept.id, refused.id], None)
    observer = RefusingObserver()

    with structlog.testing.capture_logs() as logs:
        memory.observe(observer, journal=journal)

    assert [r.id for r in observer.told] == [kept.id]
    assert journal.unfinished() == []
    unsendable = [e for e in logs if e["event"] == "write_recovery_unsendable"]
    assert [e["record_ids"] for e in unsendable] == [[refused.id]]
    assert {r.id for r in memory.list_memories(user_id="u1")} == {kept.id, refused.id}
    journal.close()


def test_a_version_whose_telling_fails_leaves_its_record_current(
    make_memory: Callable[..., HierarchicalMemory], tmp_path: Path
) -> None:
    """supersede and end_session raise the observer's error; the new versions are gone, the
    records they replaced current again as they were, and the journal holds no note."""
    memory = make_memory()
    kept = memory.add("refused: the office is in building 4", user_id="u1")
    chat = memory.add("refused: lunch at noon", user_id="u1", session_id="s1", importance=0.9)
    journal = Outbox(tmp_path)
    observer = RefusingObserver()
    memory.observe(observer, journal=journal)

    with pytest.raises(MessageTooLarge):
        memory.supersede(kept.id, "refused: the office moved to building 5")
    with pytest.raises(MessageTooLarge):
        memory.end_session(user_id="u1", session_id="s1")

    for record in (kept, chat):
        found = memory.get(record.id)
        fields = ("superseded_at", "superseded_by", "valid_until", "content")
        assert [getattr(found, f) for f in fields] == [getattr(record, f) for f in fields]
        assert [r.id for r in memory.get_history(record.id)] == [record.id]
    assert {r.id for r in memory.list_memories(user_id="u1", limit=100)} == {kept.id, chat.id}
    assert journal.unfinished() == []
    assert observer.told == []
    newer = memory.supersede(kept.id, "the office moved to building 5")
    assert memory.get(kept.id).superseded_by == newer.id
    journal.close()
