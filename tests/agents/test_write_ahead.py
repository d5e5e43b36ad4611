"""A pool agent killed with SIGKILL in the middle of a write: once it attaches again (and, for a
removal, once the caller retries), its index and its peers agree. The writer runs
tests/agents/write_ahead_child.py, which kills itself right after a chosen call of its local
store; the reader is attached in this process, on the same real Redis."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from hivemem.agents.agent import Agent
from hivemem.pool.errors import MemoryNotFound
from hivemem.pool.settings import HivememSettings
from hivemem.pool.shared import SharedMemoryPool

CHILD = Path(__file__).with_name("write_ahead_child.py")
USER = "gone"
#: Generous: the child loads an embedder, and the machine may be busy.
CHILD_TIMEOUT_S = 180.0
SYNC_TIMEOUT_S = 30.0

MakePool = Callable[..., SharedMemoryPool]


def _kill_writer(
    pool_settings: Callable[..., HivememSettings], scenario: str, reader: Agent
) -> list[str]:
    """Run the child's ``scenario``: once the reader holds its starting records, the child
    starts the write and kills itself in the middle. The ids of the starting records."""
    settings = pool_settings("writer")
    config = settings.data_dir.with_name("writer.json")
    config.write_text(settings.model_dump_json(), encoding="utf-8")
    with subprocess.Popen(
        [sys.executable, str(CHILD), str(config), scenario],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    ) as child:
        assert child.stdin is not None
        assert child.stdout is not None
        try:
            line = child.stdout.readline()
            assert line, child.communicate(timeout=CHILD_TIMEOUT_S)[1][-3000:]
            ids = list(json.loads(line)["ids"])
            _wait(lambda: set(ids) <= set(_held(reader, received=True)))
            child.stdin.write("go\n")
            child.stdin.flush()
            stderr = child.communicate(timeout=CHILD_TIMEOUT_S)[1]
        finally:
            child.kill()
    assert child.returncode == -signal.SIGKILL, stderr[-3000:]
    return ids


def _wait(condition: Callable[[], bool]) -> bool:
    """Poll ``condition`` until it holds (True) or the sync timeout passes (False)."""
    deadline = time.monotonic() + SYNC_TIMEOUT_S
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _reader(make_pool: MakePool) -> Agent:
    reader = make_pool("reader").register_agent("reader", clearance="secret")
    assert reader.wait_connected(60.0)
    return reader


def _writer_again(make_pool: MakePool) -> Agent:
    """The killed writer, attached again in this process; its outbox drained."""
    writer = make_pool("writer").register_agent(
        "writer", clearance="secret", share_levels=["episode"]
    )
    assert writer.flush(SYNC_TIMEOUT_S)
    return writer


def _held(agent: Agent, *, received: bool) -> dict[str, str | None]:
    """The user's records ``agent`` holds (its own, or those the writer sent): id → the id of
    the version superseding it."""
    records = agent.memory.list_memories(user_id=USER, include_superseded=True, limit=10_000)
    return {r.id: r.superseded_by for r in records if (r.received_from is not None) == received}


def _converged(writer: Agent, reader: Agent) -> tuple[dict[str, str | None], dict[str, str | None]]:
    """What each holds, once the reader holds what the writer does (or at the deadline)."""
    _wait(lambda: _held(writer, received=False) == _held(reader, received=True))
    return _held(writer, received=False), _held(reader, received=True)


@pytest.mark.parametrize("scenario", ["add_many", "supersede", "end_session"])
def test_what_a_killed_write_indexed_reaches_the_peers(
    make_pool: MakePool, pool_settings: Callable[..., HivememSettings], scenario: str
) -> None:
    """Records indexed before the kill (new records, a new version not yet linked to its
    predecessor) reach the reader once the writer attaches again, chains complete."""
    reader = _reader(make_pool)
    start = _kill_writer(pool_settings, scenario, reader)
    writer = _writer_again(make_pool)
    own, got = _converged(writer, reader)
    assert own == got
    assert len(own) > len(start)  # the killed write had reached the index
    if scenario != "add_many":  # each new version's predecessor is marked superseded
        assert sum(own[i] is not None for i in start) == len(own) - len(start)


@pytest.mark.parametrize("scenario", ["forget", "delete"])
def test_a_killed_removal_reaches_the_peers(
    make_pool: MakePool, pool_settings: Callable[..., HivememSettings], scenario: str
) -> None:
    """A forget or delete killed after its first tombstones is finished when the writer
    attaches again, and the reader holds none of the removed records; the caller's retry
    finds nothing left (a retried delete: MemoryNotFound)."""
    reader = _reader(make_pool)
    start = _kill_writer(pool_settings, scenario, reader)
    writer = _writer_again(make_pool)
    if scenario == "forget":
        retried: int | str = writer.memory.forget(user_id=USER)
    else:
        try:
            retried = len(writer.memory.delete(start[0]))
        except MemoryNotFound:
            retried = "MemoryNotFound"
    assert writer.flush(SYNC_TIMEOUT_S)
    own, got = _converged(writer, reader)
    assert got == {}  # the reader holds none of the removed records
    assert own == {}
    assert retried == (0 if scenario == "forget" else "MemoryNotFound")
