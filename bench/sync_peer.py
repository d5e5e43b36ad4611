"""The peer process of ``sync.py``: agent "b" on the shared Redis, plus a raw pub/sub subscriber
(the baseline). :func:`peer_main` obeys the commands ``sync.py`` sends ("start", "expect",
"close", "reopen", "exit") and reports on the events pipe:

- ("started", connected), ("expecting",), ("closed", total), ("reopened", connected,
  began_ns, opened_ns, caught_up_ns, total);
- ("sync", probe, found_ns, found, arrived_ns, applied_ns) for every probe received: when "b"'s
  keyword search returned, whether it held the probe's record, when the message reached "b"'s
  receiver and when its records were stored;
- ("raw", n, received_ns) for every raw pub/sub message;
- ("live_done", count, first_ns, last_ns) once the expected count of bulk records is stored.

Times are CLOCK_MONOTONIC ns (system-wide on Linux), comparable with the sender's. Both
processes build their settings with :func:`process_settings`.
"""

from __future__ import annotations

import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import redis

# Helpers shared by the bench scripts (this folder is on sys.path when a bench script runs).
from common import quiet_logs

from hivemem.agents.agent import Agent
from hivemem.pool.enums import Zone
from hivemem.pool.records import MemoryRecord
from hivemem.pool.settings import HivememSettings
from hivemem.pool.shared import SharedMemoryPool

RAW_CHANNEL = "bench:raw"
PROBE_USER = "u"


def token_of(n: int) -> str:
    """A word BM25 keeps whole and unique to probe ``n``."""
    return f"q{n:06d}z"


def process_settings(data_dir: Path, url: str) -> HivememSettings:
    """One process's settings: its own data directory; the master and admin keys both processes
    share, as the processes of one pool must, come from the environment ``sync.main`` sets
    before the peer starts (``HIVEMEM_SECURITY__ENABLED=false`` measures without security)."""
    return HivememSettings(data_dir=data_dir, redis_url=url)


def open_peer(url: str, data_dir: Path) -> tuple[SharedMemoryPool, Agent]:
    pool = SharedMemoryPool.connect(process_settings(data_dir, url))
    agent = pool.register_agent("b", clearance=Zone.INTERNAL, share_levels=[])
    return pool, agent


def peer_main(commands: Connection, events: Connection) -> None:
    """Agent "b" and a raw subscriber; obeys ``commands``, reports on ``events``."""
    quiet_logs()
    send_lock = threading.Lock()

    def emit(*message: Any) -> None:
        with send_lock:
            events.send(message)

    state: dict[str, Any] = {"arrival": 0, "target": 0, "count": 0, "first": 0, "last": 0}
    pool: SharedMemoryPool | None = None
    agent: Agent | None = None

    def on_records(stored: list[MemoryRecord]) -> None:
        applied = time.monotonic_ns()
        bulk = 0
        for record in stored:
            probe = record.metadata.get("probe")
            if not isinstance(probe, int):
                bulk += 1
                continue
            hits = agent.memory.search(  # type: ignore[union-attr]
                token_of(probe), user_id=PROBE_USER, agent_id="b", config="keyword", top_k=5
            )
            found_at = time.monotonic_ns()
            found = any(h.record.id == record.id for h in hits)
            emit("sync", probe, found_at, found, state["arrival"], applied)
        if bulk and state["target"]:
            state["first"] = state["first"] or applied
            state["last"] = applied
            state["count"] += bulk
            if state["count"] >= state["target"]:
                emit("live_done", state["count"], state["first"], state["last"])
                state["target"] = 0

    def attach(opened: Agent) -> None:
        # Stamp when a live message reaches "b"'s receiver (benchmark-only instrumentation).
        receiver = opened._receiver
        on_live = receiver._on_live

        def stamped(channel: bytes, data: bytes) -> None:
            state["arrival"] = time.monotonic_ns()
            on_live(channel, data)

        receiver._on_live = stamped  # type: ignore[method-assign]
        opened.on_receive(on_records)

    def raw_subscriber(url: str, ready: threading.Event) -> None:
        client = redis.Redis.from_url(url)
        pubsub = client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
        pubsub.subscribe(RAW_CHANNEL)
        ready.set()
        while True:
            message = pubsub.get_message(timeout=0.2)
            if message is not None and message.get("type") == "message":
                received = time.monotonic_ns()
                emit("raw", int(message["data"].split(b" ", 1)[0]), received)

    try:
        while True:
            try:
                command = commands.recv()
            except EOFError:
                return
            kind = command[0]
            if kind == "start":
                _, url, data_dir = command
                pool, agent = open_peer(url, Path(data_dir))
                attach(agent)
                connected = agent.wait_connected(30.0)
                ready = threading.Event()
                threading.Thread(
                    target=raw_subscriber, args=(url, ready), name="raw-sub", daemon=True
                ).start()
                ready.wait(10.0)
                emit("started", connected)
            elif kind == "expect":
                state.update(target=command[1], count=0, first=0, last=0)
                emit("expecting")
            elif kind == "close":
                assert pool is not None
                assert agent is not None
                total = agent.memory.stats().total
                pool.close()
                pool = agent = None
                emit("closed", total)
            elif kind == "reopen":
                _, url, data_dir = command
                began = time.monotonic_ns()
                pool, agent = open_peer(url, Path(data_dir))
                opened = time.monotonic_ns()
                connected = agent.wait_connected(300.0)
                caught_up = time.monotonic_ns()
                attach(agent)
                emit("reopened", connected, began, opened, caught_up, agent.memory.stats().total)
            elif kind == "exit":
                return
    finally:
        if pool is not None:
            pool.close()
