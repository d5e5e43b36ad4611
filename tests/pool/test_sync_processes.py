"""Sync between agents in separate OS processes, on a real redis-server: who gets what, an agent
catching up after being offline, Redis restarting mid-stream, and a sender killed with a full
outbox. Each agent of these tests runs tests/pool/sync_child.py (see its docstring for the
protocol); the tests drive the children over stdin and read what they hold."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from hivemem.pool.enums import Level, Zone
from hivemem.pool.redis_server import EmbeddedRedis
from hivemem.pool.settings import HivememSettings
from hivemem.pool.shared import SharedMemoryPool

CHILD = Path(__file__).with_name("sync_child.py")
USER = "team"
#: Generous bounds: children load an embedder (~1-2 s each) and the machine may be busy.
START_TIMEOUT_S = 90.0
SYNC_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class AgentSpec:
    """What an agent is registered with."""

    agent_id: str
    clearance: Zone
    share_levels: tuple[Level, ...]
    receive_levels: tuple[Level, ...] = tuple(Level)

    def entitled(self, sender: AgentSpec, level: Level, zone: Zone) -> bool:
        """Whether a record ``sender`` wrote at ``level`` in ``zone`` must reach this agent."""
        return (
            sender.agent_id != self.agent_id
            and level in sender.share_levels
            and level in self.receive_levels
            and zone <= self.clearance
        )


@dataclass
class AgentProcess:
    """An agent attached in a child process, driven over its stdin, answering on its stdout."""

    spec: AgentSpec
    settings: HivememSettings
    workdir: Path
    process: subprocess.Popen[str] | None = None
    stderr_path: Path | None = None
    replies: queue.Queue[dict[str, Any] | None] = field(default_factory=queue.Queue)
    events: queue.Queue[dict[str, Any] | None] = field(default_factory=queue.Queue)

    def start(self) -> None:
        """Launch the child (it connects and registers in the background); see wait_ready."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / f"{self.spec.agent_id}.json"
        config.write_text(
            json.dumps(
                {
                    "settings": self.settings.model_dump_json(),
                    "user_id": USER,
                    "agent": {
                        "agent_id": self.spec.agent_id,
                        "clearance": self.spec.clearance.value,
                        "share_levels": [level.value for level in self.spec.share_levels],
                        "receive_levels": [level.value for level in self.spec.receive_levels],
                    },
                }
            ),
            encoding="utf-8",
        )
        self.stderr_path = self.workdir / f"{self.spec.agent_id}-{time.monotonic_ns()}.stderr"
        self.replies, self.events = queue.Queue(), queue.Queue()
        with self.stderr_path.open("w", encoding="utf-8") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, str(CHILD), str(config)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                env={**os.environ, "HF_HUB_OFFLINE": "1"},
            )
        threading.Thread(target=self._read, args=(self.process,), daemon=True).start()

    def _read(self, process: subprocess.Popen[str]) -> None:
        """Sort the child's protocol lines into replies and events; None marks its end."""
        assert process.stdout is not None
        for line in process.stdout:
            if line.startswith("@@"):
                message = json.loads(line[2:])
                (self.events if "event" in message else self.replies).put(message)
        self.replies.put(None)
        self.events.put(None)

    def _failure(self, what: str) -> str:
        tail = self.log()[-3000:]
        return f"agent {self.spec.agent_id}: {what}; stderr tail:\n{tail}"

    def reply(self, op: str, timeout_s: float) -> dict[str, Any]:
        """The child's next reply, which must answer ``op``."""
        try:
            message = self.replies.get(timeout=timeout_s)
        except queue.Empty:
            raise AssertionError(self._failure(f"no reply to {op} in {timeout_s} s")) from None
        if message is None:
            raise AssertionError(self._failure(f"exited while {op} was awaited"))
        assert message["reply"] == op, message
        return message

    def wait_ready(self) -> None:
        """Wait until the agent is registered and its receiver connected."""
        ready = self.reply("ready", START_TIMEOUT_S)
        assert ready["connected"], self._failure("receiver did not connect")

    def send(self, op: str, **args: Any) -> None:
        """Send a command without waiting for its reply."""
        assert self.process is not None
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"op": op, **args}) + "\n")
        self.process.stdin.flush()

    def call(self, op: str, timeout_s: float = SYNC_TIMEOUT_S, **args: Any) -> dict[str, Any]:
        """Send a command and wait for its reply."""
        self.send(op, **args)
        return self.reply(op, timeout_s)

    def next_event(self, timeout_s: float) -> dict[str, Any]:
        """The next event line (an acknowledged write)."""
        try:
            message = self.events.get(timeout=timeout_s)
        except queue.Empty:
            raise AssertionError(self._failure(f"no event in {timeout_s} s")) from None
        if message is None:
            raise AssertionError(self._failure("exited while an event was awaited"))
        return message

    def log(self) -> str:
        """What the child wrote to stderr (its structured logs)."""
        assert self.stderr_path is not None
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def received(self) -> list[dict[str, Any]]:
        """Every record the agent holds that another agent shared with it."""
        return list(self.call("received")["records"])

    def close(self) -> None:
        """Close the agent's pool and wait for the process to exit cleanly."""
        assert self.process is not None
        self.call("close", timeout_s=30.0)
        assert self.process.wait(timeout=30) == 0, self._failure("non-zero exit")

    def kill(self) -> None:
        """SIGKILL the child (no cleanup of any kind) and reap it."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[[AgentSpec, HivememSettings], AgentProcess]]:
    """Factory of started agent processes; every process still running is killed at teardown
    (before the Redis fixture stops)."""
    started: list[AgentProcess] = []

    def make(spec: AgentSpec, settings: HivememSettings) -> AgentProcess:
        agent = AgentProcess(spec, settings, tmp_path / "children")
        started.append(agent)
        agent.start()
        return agent

    try:
        yield make
    finally:
        for agent in started:
            agent.kill()


def wait_for_ids(
    agent: AgentProcess, expected: set[str], timeout_s: float = SYNC_TIMEOUT_S
) -> list[dict[str, Any]]:
    """Poll ``agent`` until it holds (at least) every id in ``expected``; returns what it holds.
    Fails with the count still missing at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        held = agent.received()
        missing = expected - {r["id"] for r in held}
        if not missing:
            return held
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{agent.spec.agent_id} still misses {len(missing)} of {len(expected)} records "
                f"after {timeout_s} s (holds {len(held)})"
            )
        time.sleep(0.3)


def assert_exactly_once(held: Sequence[dict[str, Any]], expected: dict[str, str]) -> None:
    """``held`` (received records) is exactly ``expected`` (id -> content): each id and each
    content once, nothing else."""
    ids = Counter(r["id"] for r in held)
    contents = Counter(r["content"] for r in held)
    assert [i for i, n in ids.items() if n > 1] == []
    assert [c for c, n in contents.items() if n > 1] == []
    assert set(ids) == set(expected), (
        f"missing {len(set(expected) - set(ids))}, unexpected {len(set(ids) - set(expected))}"
    )
    assert {r["id"]: r["content"] for r in held} == expected


# -- who gets what --------------------------------------------------------------------------------


def test_three_processes_each_get_exactly_what_they_are_entitled_to(
    spawn: Callable[[AgentSpec, HivememSettings], AgentProcess],
    pool_settings: Callable[..., HivememSettings],
) -> None:
    """Three agents in three processes receive from the others exactly the records of a zone
    within their clearance and of a level both shared by the sender and asked by the receiver,
    each once."""
    specs = [
        AgentSpec("scout", Zone.PUBLIC, (Level.EPISODE, Level.DOMAIN)),
        AgentSpec(
            "analyst",
            Zone.INTERNAL,
            (Level.TRACE, Level.CATEGORY, Level.DOMAIN),
            (Level.EPISODE, Level.CATEGORY, Level.DOMAIN),
        ),
        AgentSpec(
            "director", Zone.SECRET, tuple(Level), (Level.EPISODE, Level.TRACE, Level.DOMAIN)
        ),
    ]
    agents = [spawn(spec, pool_settings(spec.agent_id)) for spec in specs]
    for agent in agents:
        agent.wait_ready()

    # Each writes two records of every (zone, level) it may write (at most its clearance); then,
    # last, one DOMAIN record per zone.
    # DOMAIN is shared and received by all, and a topic is applied in order, so holding a
    # sender's last record of a zone proves every earlier message of it was processed: a record
    # that should have been filtered out cannot still be on its way.
    written: dict[str, tuple[AgentSpec, str, Level, Zone]] = {}  # id -> (sender, content, ...)
    for spec, agent in zip(specs, agents, strict=True):
        bulk = [
            (f"{spec.agent_id} {zone} {level} #{k}", level, zone)
            for zone in Zone
            if zone <= spec.clearance
            for level in Level
            for k in range(2)
        ]
        last = [
            (f"{spec.agent_id} {zone} last", Level.DOMAIN, zone)
            for zone in Zone
            if zone <= spec.clearance
        ]
        for batch in (bulk, last):
            items = [{"content": c, "level": level, "zone": zone} for c, level, zone in batch]
            ids = agent.call("add_many", items=items)["ids"]
            assert len(ids) == len(batch)
            for record_id, (content, level, zone) in zip(ids, batch, strict=True):
                written[record_id] = (spec, content, level, zone)
    for agent in agents:
        assert agent.call("flush", timeout_s=30.0)["flushed"]

    for receiver, agent in zip(specs, agents, strict=True):
        expected = {
            record_id: content
            for record_id, (sender, content, level, zone) in written.items()
            if receiver.entitled(sender, level, zone)
        }
        assert expected  # every receiver is entitled to something...
        assert len(expected) < sum(1 for s, *_ in written.values() if s != receiver)  # not all
        held = wait_for_ids(agent, set(expected))
        assert_exactly_once(held, expected)
        for record in held:
            sender, _, level, zone = written[record["id"]]
            assert record["received_from"] == sender.agent_id
            assert (record["level"], record["zone"]) == (level.value, zone.value)
    for agent in agents:
        agent.close()


# -- offline catch-up -----------------------------------------------------------------------------


def test_agent_offline_during_ten_thousand_writes_catches_up_exactly_once(
    spawn: Callable[[AgentSpec, HivememSettings], AgentProcess],
    pool_settings: Callable[..., HivememSettings],
    make_pool: Callable[..., SharedMemoryPool],
) -> None:
    """An agent whose process was not running while another wrote 10,000 shared records gets
    all of them, each once, when a new process re-attaches it (catch-up from its cursor, in
    pages)."""
    # Small batches: 10,000 records make ~160 messages and the catch-up reads several pages.
    writer = make_pool("writer", send_batch=64).register_agent(
        "writer", clearance=Zone.INTERNAL, share_levels=[Level.CATEGORY]
    )
    reader_spec = AgentSpec("reader", Zone.INTERNAL, ())
    reader_settings = pool_settings("reader", send_batch=64)

    # The reader is known to the pool and has a cursor past a first record, then goes offline.
    reader = spawn(reader_spec, reader_settings)
    reader.wait_ready()
    first = writer.memory.add("before the outage", user_id=USER, level=Level.CATEGORY)
    assert writer.flush(30.0)
    wait_for_ids(reader, {first.id})
    reader.close()

    zones = (Zone.PUBLIC, Zone.INTERNAL)
    records = writer.memory.add_many(
        [
            {"content": f"offline write {i}", "level": Level.CATEGORY, "zone": zones[i % 2]}
            for i in range(10_000)
        ],
        user_id=USER,
        progress=False,
    )
    assert writer.flush(60.0)
    assert writer.pending == 0

    reader = spawn(reader_spec, reader_settings)
    reader.wait_ready()
    expected = {first.id: first.content} | {r.id: r.content for r in records}
    held = wait_for_ids(reader, set(expected), timeout_s=120.0)
    assert_exactly_once(held, expected)
    assert len(held) == 10_001
    reader.close()


def test_a_paused_receiver_applies_what_reached_it_late(
    spawn: Callable[[AgentSpec, HivememSettings], AgentProcess],
    pool_settings: Callable[..., HivememSettings],
    make_pool: Callable[..., SharedMemoryPool],
) -> None:
    """A receiver whose process was stopped (SIGSTOP: a suspended VM, a long pause) for longer
    than the age window (1 s here) while writes were shared gets them when it resumes: their
    live copies are stale then, so it reads them from the stream, where their age is judged
    against when Redis appended them (on time). It refused them as ``stale`` and moved its
    cursor past them before: lost for good."""
    writer = make_pool("writer").register_agent(
        "writer", clearance=Zone.INTERNAL, share_levels=[Level.CATEGORY]
    )
    settings = pool_settings("reader")
    security = settings.security.model_copy(update={"max_message_age_s": 1.0})
    reader = spawn(AgentSpec("reader", Zone.INTERNAL, ()), settings.model_copy(
        update={"security": security}
    ))  # fmt: skip
    reader.wait_ready()
    first = writer.memory.add("before the pause", user_id=USER, level=Level.CATEGORY)
    wait_for_ids(reader, {first.id})
    assert reader.process is not None
    reader.process.send_signal(signal.SIGSTOP)
    try:
        paused = [
            writer.memory.add(f"during the pause {i}", user_id=USER, level=Level.CATEGORY)
            for i in range(3)
        ]
        assert writer.flush(30.0)
        time.sleep(2.5)
    finally:
        reader.process.send_signal(signal.SIGCONT)
    expected = {r.id: r.content for r in [first, *paused]}
    assert_exactly_once(wait_for_ids(reader, set(expected)), expected)
    assert "pool_live_message_late" in reader.log()
    reader.close()


# -- Redis restart --------------------------------------------------------------------------------


def test_redis_restart_mid_stream_loses_and_duplicates_nothing(
    spawn: Callable[[AgentSpec, HivememSettings], AgentProcess],
    pool_settings: Callable[..., HivememSettings],
    redis_server: EmbeddedRedis,
) -> None:
    """Every write a sender had acknowledged while Redis stopped and started again in the
    middle of its stream reaches the receiver exactly once."""
    reader = spawn(AgentSpec("reader", Zone.INTERNAL, ()), pool_settings("reader"))
    writer = spawn(AgentSpec("writer", Zone.INTERNAL, (Level.TRACE,)), pool_settings("writer"))
    reader.wait_ready()
    writer.wait_ready()

    total = 150
    items = [
        {"content": f"stream write {i}", "level": Level.TRACE, "zone": [*Zone][i % 2]}
        for i in range(total)
    ]
    writer.send("add_each", items=items, interval_s=0.02)
    acked: dict[str, str] = {}

    def take(count: int) -> int:
        """Record the next ``count`` acknowledgements; returns the outbox size at the last."""
        pending = 0
        for _ in range(count):
            event = writer.next_event(30.0)
            acked[event["id"]] = event["content"]
            pending = event["pending"]
        return pending

    take(40)
    redis_server.stop()
    # Acknowledged while Redis is down: they can only be in the outbox.
    assert take(40) > 0
    redis_server.start()
    take(total - 80)
    assert len(writer.reply("add_each", 30.0)["ids"]) == total
    assert len(acked) == total

    flushed = writer.call("flush", timeout_s=60.0)
    assert flushed["flushed"], flushed
    held = wait_for_ids(reader, set(acked))
    assert_exactly_once(held, acked)
    # Append-only Redis kept the topics' epochs: the reader resumed, it did not start over.
    assert "pool_rebootstrap" not in reader.log()
    reader.close()
    writer.close()


# -- sender killed with a full outbox -------------------------------------------------------------


def test_sender_killed_with_full_outbox_delivers_after_restart(
    spawn: Callable[[AgentSpec, HivememSettings], AgentProcess],
    pool_settings: Callable[..., HivememSettings],
    redis_server: EmbeddedRedis,
) -> None:
    """Writes a sender acknowledged while Redis was down sit in its outbox through a SIGKILL;
    a new process re-attaching the agent sends them, and the receiver gets each once."""
    reader = spawn(AgentSpec("reader", Zone.SECRET, ()), pool_settings("reader"))
    writer_spec = AgentSpec("writer", Zone.SECRET, (Level.EPISODE,))
    writer_settings = pool_settings("writer")
    writer = spawn(writer_spec, writer_settings)
    reader.wait_ready()
    writer.wait_ready()

    redis_server.stop()
    items = [
        {"content": f"killed write {i}", "level": Level.EPISODE, "zone": [*Zone][i % 4]}
        for i in range(20)
    ]
    ids = writer.call("add_each", items=items)["ids"]
    acked = {record_id: item["content"] for record_id, item in zip(ids, items, strict=True)}
    # Per write, one sync and one ingest message; none sent.
    assert writer.call("pending")["pending"] == 2 * len(items)
    writer.kill()
    assert writer.process is not None
    assert writer.process.returncode == -signal.SIGKILL

    redis_server.start()
    writer = spawn(writer_spec, writer_settings)
    writer.wait_ready()
    flushed = writer.call("flush", timeout_s=60.0)
    assert flushed == {"reply": "flush", "flushed": True, "pending": 0}
    held = wait_for_ids(reader, set(acked))
    assert_exactly_once(held, acked)
    reader.close()
    writer.close()
