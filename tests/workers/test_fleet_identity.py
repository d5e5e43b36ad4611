"""The fleet's one identity: every worker of a pool signs what it publishes with the same key,
whatever its data directory (each container of a scaled fleet has its own), on a real Redis."""

from __future__ import annotations

from collections.abc import Callable

from hivemem.pool.enums import Zone
from hivemem.pool.envelope import make_envelope
from hivemem.pool.shared import SharedMemoryPool
from hivemem.security.pool_security import WORKER_SENDER
from hivemem.workers.runtime import WorkerRuntime
from tests.workers.test_ingest import hostile


def test_workers_with_their_own_directories_sign_with_one_key(
    worker_settings: Callable[..., object], make_pool: Callable[..., SharedMemoryPool]
) -> None:
    """Two workers, each with its own data directory and the operator's shared keys, register
    the same key: what the first publishes still verifies at an agent after the second
    started. Before, each made its own key in its directory and the last to start replaced
    the registry's, so an agent refused the other's messages as forged."""
    agent = make_pool("agents").register_agent("reader", clearance=Zone.SECRET)
    settings = worker_settings()
    first = WorkerRuntime(settings)
    second = WorkerRuntime(settings.model_copy(update={"data_dir": settings.data_dir / "other"}))
    try:
        assert first.security is not None
        envelope = make_envelope(sender=WORKER_SENDER, zone=Zone.PUBLIC, records=[hostile("x")])
        sent = first.codec.encode(envelope)
        assert second.security is not None  # the second worker starts: it registers
        assert agent.identity.codec.decode(sent).message_id == envelope.message_id
        key = first.security.workers_key().public_key
        assert second.security.workers_key().public_key == key
        assert first.registry.get(WORKER_SENDER).public_key == key
    finally:
        first.close()
        second.close()
