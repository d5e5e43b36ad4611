"""The peer process of ``security.py``, and the settings of the pools both processes open.

:func:`peer_main` holds agent "b" (clearance INTERNAL) in each of the two pools, ``plain``
(``security.enabled`` off) and ``secure`` (the defaults), reports ("started", connected) once
both are connected, then ("sync", mode, probe, t1_ns, arrived_ns) for every probe received, until
``security.py`` sends ("exit",). Times are CLOCK_MONOTONIC ns (system-wide on Linux), comparable
with the sender's.
"""

from __future__ import annotations

import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

# Helpers shared by the bench scripts (this folder is on sys.path when a bench script runs).
from common import quiet_logs

from hivemem.agents.embedding import shared_embedder
from hivemem.agents.receiving import Receiver
from hivemem.pool.enums import Zone
from hivemem.pool.records import MemoryRecord
from hivemem.pool.settings import EmbeddingSettings, HivememSettings, PoolSettings, SecuritySettings
from hivemem.pool.shared import SharedMemoryPool

MODES = ("plain", "secure")


def mode_settings(mode: str, root: Path, url: str, name: str, namespace: str) -> HivememSettings:
    """Settings of one pool process: ``secure`` shares the key files under ``root/keys``."""
    keys = root / "keys"
    security = SecuritySettings(
        enabled=mode == "secure",
        master_key_file=keys / "master.key",
        admin_key_file=keys / "admin.key",
    )
    return HivememSettings(
        data_dir=root / name,
        redis_url=url,
        pool=PoolSettings(namespace=namespace),
        security=security,
    )


def stamp_arrivals() -> dict[int, int]:
    """Measurement only: have each receiver thread note when a pub/sub message reached it
    (CLOCK_MONOTONIC ns, by thread id) before it handles the message exactly as before."""
    arrived: dict[int, int] = {}
    handle = Receiver._on_live

    def stamped(receiver: Receiver, channel: bytes, data: bytes) -> None:
        arrived[threading.get_ident()] = time.monotonic_ns()
        handle(receiver, channel, data)

    Receiver._on_live = stamped  # type: ignore[method-assign]
    return arrived


def peer_main(root_dir: str, url: str, commands: Connection, events: Connection) -> None:
    """Agent "b" in each pool; reports ("sync", mode, probe, t1_ns, arrived_ns) for every probe
    received (``arrived_ns``: when its message reached the receiver thread)."""
    quiet_logs()
    root = Path(root_dir)
    send_lock = threading.Lock()
    arrived = stamp_arrivals()

    def emit(*message: Any) -> None:
        with send_lock:
            events.send(message)

    def listener(mode: str) -> Any:
        def on_records(stored: list[MemoryRecord]) -> None:
            received = time.monotonic_ns()
            for record in stored:
                probe = record.metadata.get("probe")
                if isinstance(probe, int):
                    emit("sync", mode, probe, received, arrived.get(threading.get_ident(), 0))

        return on_records

    embedder = shared_embedder(EmbeddingSettings(), root)
    pools: list[SharedMemoryPool] = []
    try:
        connected = True
        for mode in MODES:
            settings = mode_settings(mode, root, url, f"peer-{mode}", f"bench-{mode}")
            pool = SharedMemoryPool.connect(settings, embedder=embedder)
            pools.append(pool)
            agent = pool.register_agent("b", clearance=Zone.INTERNAL, share_levels=[])
            agent.on_receive(listener(mode))
            connected = agent.wait_connected(30.0) and connected
        emit("started", connected)
        while True:
            try:
                if commands.recv()[0] == "exit":
                    return
            except EOFError:
                return
    finally:
        for pool in pools:
            pool.close()
