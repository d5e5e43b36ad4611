"""A drain whose commit reply is lost, on a real Redis behind a real TCP relay, with a real agent
and the workers' real ingest and Qdrant Edge zone store: the round counts as done, and the
messages it refused are still audited."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import structlog

from hivemem.pool.adapters.redis_bus import ingest_topic
from hivemem.pool.enums import Level, Zone
from hivemem.pool.redis_server import EmbeddedRedis
from hivemem.pool.settings import HivememSettings
from hivemem.pool.shared import SharedMemoryPool
from hivemem.security.audit_entry import AuditEvent
from hivemem.security.ingest_keys import FIRST_INGEST_ID
from hivemem.workers.runtime import WorkerRuntime
from tests.relay import Relay
from tests.workers.test_ingest_queues import ignore


@pytest.fixture
def relayed(
    worker_settings: Callable[..., HivememSettings], relay: Relay, redis_server: EmbeddedRedis
) -> Iterator[WorkerRuntime]:
    """A worker runtime whose Redis connection goes through ``relay`` and waits 0.3 s for a
    reply."""
    base = worker_settings(consolidation={"threshold": 1000})
    runtime = WorkerRuntime(
        base.model_copy(
            update={
                "redis_url": relay.url(redis_server),
                "pool": base.pool.model_copy(update={"command_timeout_s": 0.3}),
            }
        )
    )
    yield runtime
    runtime.close()


def test_a_commit_whose_reply_is_lost_still_audits_the_rounds_refusals(
    make_pool: Callable[..., SharedMemoryPool], relayed: WorkerRuntime, relay: Relay
) -> None:
    """Two writes sealed to an ingest key retired by force are refused; the reply to the
    round's commit (cursor moved, queue trimmed) is lost. The drain reads the cursor, finds the
    round committed, and audits both refusals; nothing is left queued."""
    pool = make_pool("agents")
    writer = pool.register_agent(
        "writer", clearance=Zone.CONFIDENTIAL, share_levels=[Level.EPISODE]
    )
    for n in range(2):
        writer.memory.add(f"note {n}", user_id="u1", zone=Zone.INTERNAL)
    assert writer.flush()
    pool.rotate_ingest_key()
    pool.retire_ingest_key(FIRST_INGEST_ID, force=True)  # those two open nowhere now

    relay.hold_reply_to = (b"XTRIM", 0.6)
    with structlog.testing.capture_logs() as logs:
        relayed.ingest.drain(Zone.INTERNAL, on_due=ignore)

    assert "ingest_commit_reply_lost" in [e["event"] for e in logs]
    refused = [
        e.details["reason"]
        for e in relayed.audit.entries()
        if e.kind == AuditEvent.REJECTED_MESSAGE
    ]
    assert refused == ["unknown_key", "unknown_key"]
    backlog = relayed.bus.read(ingest_topic(Zone.INTERNAL, "writer"), 0, limit=10)
    assert backlog.deliveries == []
