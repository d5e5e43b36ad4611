"""A Redis that stops answering (its process stopped with SIGSTOP), on a real server: a send
gives up after ``pool.command_timeout_s`` instead of waiting for as long as the stall, keeps its
message in the outbox, and sends it once Redis answers again."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

import structlog

from hivemem.pool.enums import Level, Zone
from hivemem.pool.redis_server import EmbeddedRedis
from hivemem.pool.shared import SharedMemoryPool
from tests.pool.test_shared import add, received
from tests.waiting import wait_for


def test_a_send_to_a_stalled_redis_times_out_and_goes_later(
    make_pool: Callable[..., SharedMemoryPool], redis_server: EmbeddedRedis
) -> None:
    """While Redis is stopped, the writer's send fails with TimeoutError within about the
    command timeout (1 s here; logged ``pool_send_failed``), the write stays acknowledged in the
    outbox, and it reaches the peer after Redis resumes."""
    pool = make_pool("stalled", command_timeout_s=1.0)
    writer = pool.register_agent("writer", clearance=Zone.INTERNAL, share_levels=[Level.CATEGORY])
    peer = pool.register_agent("peer", clearance=Zone.INTERNAL)
    assert writer.wait_connected()
    assert peer.wait_connected()
    add(writer, "before the stall", Level.CATEGORY, Zone.INTERNAL)  # the user's keys are held
    assert wait_for(lambda: "before the stall" in received(peer))
    assert redis_server.pid is not None

    with structlog.testing.capture_logs() as logs:
        os.kill(redis_server.pid, signal.SIGSTOP)
        try:
            add(writer, "through the stall", Level.CATEGORY, Zone.INTERNAL)
            timed_out = wait_for(
                lambda: any(
                    e["event"] == "pool_send_failed" and e.get("error") == "TimeoutError"
                    for e in list(logs)
                ),
                timeout_s=8.0,
            )
        finally:
            os.kill(redis_server.pid, signal.SIGCONT)

    assert timed_out
    assert writer.flush()
    assert wait_for(lambda: "through the stall" in received(peer), timeout_s=20.0)
