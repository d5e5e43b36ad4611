"""A Redis restarted from an older snapshot, whose topic counters went back below the receivers'
cursors, sends them back to the stream's start instead of leaving every message numbered at or
below their cursors unread. (A receiver paused past the age window: tests/pool/
test_sync_processes.py.)"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import redis
import structlog

from hivemem.agents.agent import Agent
from hivemem.agents.embedding import FastEmbedder
from hivemem.pool.enums import Level, Zone
from hivemem.pool.redis_server import EmbeddedRedis
from hivemem.pool.settings import HivememSettings
from hivemem.pool.shared import SharedMemoryPool
from tests.pool.test_shared import add, received
from tests.waiting import wait_for


def write_around_a_snapshot(server: EmbeddedRedis, writer: Agent, peer: Agent) -> None:
    """Three writes the peer receives, Redis's snapshot (RDB), then three more it receives:
    the snapshot's counter is 3, the peer's cursor 6."""
    for i in range(3):
        add(writer, f"kept {i}", Level.CATEGORY, Zone.INTERNAL)
    assert wait_for(lambda: len(received(peer)) == 3)
    redis.Redis.from_url(server.url).save()
    for i in range(3):
        add(writer, f"rolled back {i}", Level.CATEGORY, Zone.INTERNAL)
    assert wait_for(lambda: len(received(peer)) == 6)


def test_a_redis_restored_from_an_older_snapshot_sends_receivers_back_to_the_stream(
    pool_settings: Callable[..., HivememSettings], embedder: FastEmbedder, tmp_path: Path
) -> None:
    """Redis saved a snapshot (RDB) at the 3rd message, took 3 more, was killed and started
    from the snapshot: the topic keeps its epoch, its counter is back at 3. The peer, which
    had applied 6, finds the counter below its cursor when it reconnects, logs
    ``pool_rebootstrap`` and reads the stream from its start, so the writes made after the
    restart (numbered 4 to 6 again) reach it. It skipped all but the one past its cursor
    before."""
    with EmbeddedRedis(tmp_path / "snapshots", appendonly=False) as server:
        settings = pool_settings("rolled", retry_max_s=0.2).model_copy(
            update={"redis_url": server.url}
        )
        with SharedMemoryPool.connect(settings, embedder=embedder) as pool:
            writer = pool.register_agent("writer", clearance=Zone.INTERNAL,
                                         share_levels=[Level.CATEGORY])  # fmt: skip
            peer = pool.register_agent("peer", clearance=Zone.INTERNAL)
            assert writer.wait_connected()
            assert peer.wait_connected()
            write_around_a_snapshot(server, writer, peer)
            with structlog.testing.capture_logs() as logs:
                server.stop(kill=True)
                server.start()
                assert wait_for(lambda: any(e["event"] == "pool_rebootstrap" for e in logs))
                after = [f"after the restart {i}" for i in range(3)]
                for content in after:
                    add(writer, content, Level.CATEGORY, Zone.INTERNAL)
                assert writer.flush(20.0)
                assert wait_for(lambda: set(after) <= received(peer).keys(), timeout_s=15.0)
            assert {e.get("reason") for e in logs if e["event"] == "pool_rebootstrap"} == {
                "the topic's counter went back: Redis restored older data"
            }


def test_a_receiver_back_after_the_counter_passed_its_cursor_again_reads_from_the_start(
    pool_settings: Callable[..., HivememSettings], embedder: FastEmbedder, tmp_path: Path
) -> None:
    """The peer is away while Redis is restored from a snapshot at the 3rd message (its cursor
    stays at 6) and the writer writes four more, numbered 4 to 7: when the peer comes back the
    counter is past its cursor again, but the entry at 6 is another message than the one its
    cursor keeps the digest of, so it reads the stream from the start and gets all four. It
    read from 7 on before, and the writes numbered 4 to 6 were lost to it."""
    with EmbeddedRedis(tmp_path / "snapshots", appendonly=False) as server:
        writer_settings, peer_settings = (
            pool_settings(name, retry_max_s=0.2).model_copy(update={"redis_url": server.url})
            for name in ("writer", "peer")
        )
        with SharedMemoryPool.connect(writer_settings, embedder=embedder) as pool:
            writer = pool.register_agent("writer", clearance=Zone.INTERNAL,
                                         share_levels=[Level.CATEGORY])  # fmt: skip
            peer_pool = SharedMemoryPool.connect(peer_settings, embedder=embedder)
            peer = peer_pool.register_agent("peer", clearance=Zone.INTERNAL)
            assert peer.wait_connected()
            write_around_a_snapshot(server, writer, peer)
            peer_pool.close()
            server.stop(kill=True)
            server.start()
            after = [f"after the restart {i}" for i in range(4)]
            for content in after:
                add(writer, content, Level.CATEGORY, Zone.INTERNAL)
            assert writer.flush(20.0)
            with structlog.testing.capture_logs() as logs:
                peer_pool = SharedMemoryPool.connect(peer_settings, embedder=embedder)
                peer = peer_pool.attach("peer")
                assert wait_for(lambda: set(after) <= received(peer).keys(), timeout_s=15.0)
            peer_pool.close()
            reasons = {e.get("reason") for e in logs if e["event"] == "pool_rebootstrap"}
            assert reasons == {"another message at the cursor: Redis restored older data"}
