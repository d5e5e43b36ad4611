"""Several threads of one process on one memory."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from hivemem.agents.memory import HierarchicalMemory
from hivemem.pool.errors import MemoryNotFound, StoreLocked, SupersessionConflict
from tests.waiting import wait_for


def test_concurrent_adds_searches_and_supersessions(memory: HierarchicalMemory) -> None:
    """Writers and readers in parallel: no error, every acknowledged add is stored once, and
    readers only ever see their own user's records."""
    errors: list[BaseException] = []
    added: list[str] = []
    lock = threading.Lock()

    def writer(user: str) -> None:
        try:
            for i in range(15):
                record = memory.add(f"{user} note {i} about gardening", user_id=user)
                if i % 5 == 0:
                    record = memory.supersede(
                        record.id, f"{user} note {i} about gardening, revised"
                    )
                with lock:
                    added.append(record.id)
        except BaseException as exc:  # noqa: BLE001 - a thread hands every failure to the test
            errors.append(exc)

    def reader(user: str) -> None:
        try:
            for _ in range(20):
                for hit in memory.search("gardening", user_id=user):
                    assert hit.record.scope.user_id == user
        except BaseException as exc:  # noqa: BLE001 - as above
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(f"w{i}",)) for i in range(3)]
    threads += [threading.Thread(target=reader, args=(f"w{i}",)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    stats = memory.stats()
    assert stats.current == len(added) == 45
    assert stats.superseded == 9


def test_racing_supersessions_have_one_winner(memory: HierarchicalMemory) -> None:
    """Two threads superseding the same version: one succeeds, the other gets a conflict."""
    original = memory.add("Wes's desk is 4B", user_id="wes")
    outcomes: list[object] = []
    barrier = threading.Barrier(4)

    def race(text: str) -> None:
        barrier.wait()
        try:
            outcomes.append(memory.supersede(original.id, text))
        except SupersessionConflict as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=race, args=(f"Wes's desk is {n}C",)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [o for o in outcomes if not isinstance(o, SupersessionConflict)]
    assert len(winners) == 1
    assert len(memory.get_history(original.id)) == 2
    assert memory.stats(user_id="wes").current == 1


def test_access_counts_flush_while_records_are_deleted(memory: HierarchicalMemory) -> None:
    """Reads count accesses; flushing them while another thread deletes the records read
    neither raises nor loses the counts of those still there. The access writer holds the
    memory's write lock for each chunk; before, a delete landing between its read of a chunk's
    counts and its write made flush() raise MemoryNotFound (about 1 flush in 75) and dropped
    the chunk."""
    records = memory.add_many([f"fact {k} about the garden" for k in range(600)], user_id="u1")
    ids = [r.id for r in records]
    kept, doomed = ids[:100], ids[100:]
    errors: list[BaseException] = []
    flushes = 0

    def deleter() -> None:
        for record_id in doomed[:300]:
            memory.delete(record_id)
            time.sleep(0.002)  # spread over the reader's flushes

    deleting = threading.Thread(target=deleter)
    deleting.start()
    try:
        while deleting.is_alive():
            window = doomed[(flushes * 40) % len(doomed) :][:40]
            for record_id in kept[:5] + window:
                with contextlib.suppress(MemoryNotFound):
                    memory.get(record_id)
            memory.flush()
            flushes += 1
    except BaseException as exc:  # noqa: BLE001 - the deleter must end before the test fails
        errors.append(exc)
    deleting.join()
    memory.flush()

    assert errors == []
    assert flushes > 100
    counts = {r.id: r.access_count for r in memory.list_memories(user_id="u1", limit=2000)}
    assert set(counts) == set(kept) | set(doomed[300:])
    assert all(counts[i] == flushes for i in kept[:5])


def test_a_forked_process_may_not_use_its_parents_memory(
    make_memory: Callable[..., HierarchicalMemory], tmp_path: Path
) -> None:
    """A process forked after the memory opened shares its directory's lock and files: a write
    there was acknowledged and then lost (the parent's engine never saw it). The child's calls
    raise StoreLocked, its close() leaves the parent's memory alone (the lock stays held), and
    the parent goes on."""
    memory = make_memory("parent")
    memory.add("written before the fork", user_id="u1")
    reading, writing = os.pipe()
    child = os.fork()
    if child == 0:  # the child: report what it was told, close, leave at once
        try:
            memory.add("written by the child", user_id="u1")
            outcome = b"added"
        except StoreLocked:
            outcome = b"refused"
        memory.close()
        os.write(writing, outcome)
        os._exit(0)
    os.close(writing)
    if not wait_for(lambda: os.waitpid(child, os.WNOHANG)[0] == child, timeout_s=30.0):
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
        pytest.fail("the child hung on its parent's memory")
    assert os.read(reading, 16) == b"refused"
    with pytest.raises(StoreLocked):  # the child's close() did not unlock the directory
        HierarchicalMemory(tmp_path / "parent", settings=memory.settings)
    memory.add("written after the fork", user_id="u1")
    assert len(memory.list_memories(user_id="u1")) == 2
