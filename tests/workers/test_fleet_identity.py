"""The fleet's one identity: every worker of a pool signs what it publishes with the same key,
whatever its data directory (each container of a scaled fleet has its own), on a real Redis."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import structlog

from hivemem.pool.enums import Zone
from hivemem.pool.envelope import make_envelope
from hivemem.pool.settings import HivememSettings
from hivemem.pool.shared import SharedMemoryPool
from hivemem.security.audit_entry import AuditEvent
from hivemem.security.pool_security import WORKER_SENDER
from hivemem.security.signing import SigningKey
from hivemem.workers.runtime import WorkerRuntime
from tests.workers.test_ingest import hostile


def test_workers_with_their_own_directories_sign_with_one_key(
    worker_settings: Callable[..., HivememSettings], make_pool: Callable[..., SharedMemoryPool]
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


def test_a_lone_workers_key_becomes_the_shared_one(
    worker_settings: Callable[..., HivememSettings],
) -> None:
    """Upgrading a worker that made its key in its data directory: with no shared key yet, its
    own becomes the shared one (what it published before still verifies); a second worker
    with another key of its own then takes the shared one."""
    settings = worker_settings()
    before = SigningKey.load_or_create(settings.data_dir / "keys" / "workers.key")
    other = settings.model_copy(update={"data_dir": settings.data_dir / "other"})
    SigningKey.load_or_create(other.data_dir / "keys" / "workers.key")
    first, second = WorkerRuntime(settings), WorkerRuntime(other)
    try:
        assert first.security is not None
        assert second.security is not None
        assert first.security.workers_key().public_key == before.public_key
        assert second.security.workers_key().public_key == before.public_key
    finally:
        first.close()
        second.close()


def test_the_shared_key_needs_no_file_and_a_set_file_wins(
    worker_settings: Callable[..., HivememSettings], tmp_path: Path
) -> None:
    """The shared key lives in Redis, wrapped by the master key. A worker whose own old key
    file is damaged starts, first or not (the file is read only to make the shared key, and a
    damaged one is passed over, logged); with ``security.workers_key_file`` set, that file's
    key is the one. The workers' first registration, and the change of key, are audited."""
    settings = worker_settings()
    damaged = settings.model_copy(update={"data_dir": settings.data_dir / "damaged"})
    (damaged.data_dir / "keys").mkdir(parents=True)
    (damaged.data_dir / "keys" / "workers.key").write_text("not a key")
    first = WorkerRuntime(damaged)
    second = WorkerRuntime(settings)
    chosen = SigningKey.load_or_create(tmp_path / "chosen.key")
    pinned = settings.security.model_copy(update={"workers_key_file": tmp_path / "chosen.key"})
    third = WorkerRuntime(settings.model_copy(update={"security": pinned}))
    try:
        with structlog.testing.capture_logs() as logs:
            assert first.security is not None
        assert [e["event"] for e in logs if "workers_key" in e["event"]] == [
            "workers_key_unreadable"
        ]
        assert second.security is not None
        assert third.security is not None
        assert second.security.workers_key().public_key == first.security.workers_key().public_key
        assert third.security.workers_key().public_key == chosen.public_key
        audited = [
            (e.kind, e.details.get("reason"))
            for e in third.audit.entries()
            if e.subject == WORKER_SENDER
        ]
        assert audited == [
            (AuditEvent.REGISTERED, None),  # the first worker; the second changed nothing
            (AuditEvent.DEREGISTERED, "new_key"),  # the third's file replaced the key
            (AuditEvent.REGISTERED, None),
        ]
    finally:
        for runtime in (first, second, third):
            runtime.close()
