"""Archival and restore beside the ingest, on a real Redis and real Qdrant Edge zone shards: a
delete or a new version the ingest stores while a user's records are being moved between the
live collection and the archive takes effect where the record ends up. The ingest's drain runs
in a second thread (as a second worker on a Qdrant server would) once the move has read what it
moves (:class:`~tests.workers.interleave.Interleave`); the move goes on after a moment, and the
drain ends in its own time."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from hivemem.agents.agent import Agent
from hivemem.pool.enums import Level, Zone
from hivemem.pool.shared import SharedMemoryPool
from hivemem.workers.runtime import WorkerRuntime
from tests.workers.interleave import Interleave
from tests.workers.test_archive_races import archival, ignore, owned, stored

ZONE = Zone.PUBLIC
#: How long the move waits for the drain it let in before it goes on (seconds).
HEAD_START_S = 1.0


@pytest.fixture
def writer(make_pool: Callable[..., SharedMemoryPool]) -> Agent:
    return make_pool("writer").register_agent(
        "writer", clearance=Zone.SECRET, share_levels=[Level.EPISODE]
    )


class Drain:
    """A hook that queues the agent's write (``write()``) and starts a drain of the zone in a
    thread, given a head start: it stores the write unless something holds it back."""

    def __init__(self, runtime: WorkerRuntime, write: Callable[[], None]) -> None:
        self._runtime = runtime
        self._write = write
        self._thread = threading.Thread(target=self._drain, name="second-worker")
        self.errors: list[BaseException] = []

    def _drain(self) -> None:
        try:
            self._runtime.ingest.drain(ZONE, on_due=ignore)
        except BaseException as error:  # noqa: BLE001 - reported by join()
            self.errors.append(error)

    def __call__(self) -> None:
        self._write()
        self._thread.start()
        self._thread.join(HEAD_START_S)

    def join(self) -> None:
        """Wait for the drain to end; raise what it raised."""
        self._thread.join(30.0)
        assert not self._thread.is_alive()
        if self.errors:
            raise self.errors[0]


def superseding(writer: Agent, old: str, content: str, new: list[str]) -> Callable[[], None]:
    def write() -> None:
        new.append(writer.memory.supersede(old, content).id)
        assert writer.flush()

    return write


def deleting(writer: Agent, record_id: str) -> Callable[[], None]:
    def write() -> None:
        writer.memory.delete(record_id)
        assert writer.flush()

    return write


def test_a_new_version_stored_during_an_archive_marks_the_archived_copy(
    make_runtime: Callable[..., WorkerRuntime], writer: Agent
) -> None:
    """A new version the ingest stores while its predecessor is being archived leaves the
    archived copy superseded, so that restored it is history (before, the ingest marked the
    live copy, which the archive then replaced by the copy it had read: two current
    versions)."""
    runtime = make_runtime()
    [old] = stored(runtime, writer, "alice", 1)
    new: list[str] = []
    drain = Drain(runtime, superseding(writer, old, "alice moved to Porto", new))
    between = Interleave(runtime.store, "archive_put", drain)

    assert archival(runtime, between).archive(ZONE, [old]) == [old]
    drain.join()
    assert runtime.store.archive_get(ZONE, [old])[0].superseded_by == new[0]
    assert runtime.archive.restore(ZONE, ids=[old]) == [old]
    both = runtime.store.get(ZONE, [old, *new])
    assert [r.content for r in both if r.is_current] == ["alice moved to Porto"]


def test_a_delete_stored_during_an_archive_stays(
    make_runtime: Callable[..., WorkerRuntime], writer: Agent
) -> None:
    """A record the ingest deletes while it is being archived ends up a tombstone with no
    archived copy (before, the archive wrote the copy it had read to the archive and then
    removed the tombstone: the record lived on in the archive, and a late copy of its message
    would be stored again)."""
    runtime = make_runtime()
    [gone] = stored(runtime, writer, "alice", 1)
    drain = Drain(runtime, deleting(writer, gone))
    between = Interleave(runtime.store, "archive_put", drain)

    archival(runtime, between).archive(ZONE, [gone])
    drain.join()
    assert runtime.store.presence(ZONE, [gone]) == {gone: True}
    assert runtime.store.archive_ids(ZONE, owned("alice")) == []


def test_a_delete_stored_during_a_restore_stays(
    make_runtime: Callable[..., WorkerRuntime], writer: Agent
) -> None:
    """A record the ingest deletes while it is being restored stays deleted (before, the
    restore wrote the copy it had read over the tombstone: the record lived again)."""
    runtime = make_runtime()
    [gone] = stored(runtime, writer, "alice", 1)
    runtime.archive.archive(ZONE, [gone])
    drain = Drain(runtime, deleting(writer, gone))
    between = Interleave(runtime.store, "upsert", drain)

    archival(runtime, between).restore(ZONE, ids=[gone])
    drain.join()
    assert runtime.store.presence(ZONE, [gone]) == {gone: True}
    assert runtime.store.archive_ids(ZONE, owned("alice")) == []


def test_a_new_version_stored_during_a_restore_marks_the_restored_record(
    make_runtime: Callable[..., WorkerRuntime], writer: Agent
) -> None:
    """A new version the ingest stores while its predecessor is being restored leaves the
    restored record superseded (before, the ingest marked the archived copy, which the restore
    then removed after writing the copy it had read: two current versions)."""
    runtime = make_runtime()
    [old] = stored(runtime, writer, "alice", 1)
    runtime.archive.archive(ZONE, [old])
    new: list[str] = []
    drain = Drain(runtime, superseding(writer, old, "alice moved to Porto", new))
    between = Interleave(runtime.store, "upsert", drain)

    assert archival(runtime, between).restore(ZONE, ids=[old]) == [old]
    drain.join()
    both = runtime.store.get(ZONE, [old, *new])
    assert [r.content for r in both if r.is_current] == ["alice moved to Porto"]
    assert runtime.store.archive_ids(ZONE, owned("alice")) == []
