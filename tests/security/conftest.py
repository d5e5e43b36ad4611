"""Fixtures of the security tests: a client of the test's real Redis, and an audit log on it
with a JSONL copy under the test's directory; helpers for what agents received, what the
broker answers and what receivers refused."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from hivemem.pool.redis_server import EmbeddedRedis
from hivemem.pool.shared import SharedMemoryPool
from hivemem.security import AuditEntry, AuditEvent, AuditLog
from tests.conftest import Clock

#: Attacks tried by tests/security/test_attacks.py, by kind (printed at the end of the run).
ATTEMPTS: Counter[str] = Counter()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """How many attempts of each kind of attack ran (each rejected, or the test failed)."""
    if not ATTEMPTS:
        return
    terminalreporter.section("security: attacks tried and rejected")
    for kind, count in sorted(ATTEMPTS.items()):
        terminalreporter.write_line(f"{count:5d}  {kind}")
    terminalreporter.write_line(f"{sum(ATTEMPTS.values()):5d}  in all")


def received(agent: Any) -> set[str]:
    """The contents of user u1's records that ``agent`` got from others."""
    found = agent.memory.list_memories(user_id="u1", limit=1000)
    return {r.content for r in found if r.received_from is not None}


def subscribed(agent: redis.Redis, channel: str, *, glob: bool = False) -> Any:
    """Subscribe (or, with ``glob``, psubscribe) on a fresh pub/sub connection and return
    Redis's answer (or raise its error)."""
    pubsub = agent.pubsub()  # type: ignore[no-untyped-call]
    try:
        (pubsub.psubscribe if glob else pubsub.subscribe)(channel)
        return pubsub.get_message(timeout=1.0)  # type: ignore[no-untyped-call]
    finally:
        pubsub.close()  # type: ignore[no-untyped-call]


def refused_all(attempts: Iterable[Callable[[], object]]) -> int:
    """Run each attempt, asserting that Redis answers it with NOPERM; how many were refused."""
    refusals = 0
    for attempt in attempts:
        with pytest.raises(redis.exceptions.NoPermissionError):
            attempt()
        refusals += 1
    return refusals


def rejections(pool: SharedMemoryPool, actor: str) -> list[str]:
    """The reasons of the audited rejections by ``actor``, oldest first."""
    return [
        str(e.details.get("reason"))
        for e in pool.audit.entries()
        if e.kind == AuditEvent.REJECTED_MESSAGE and e.actor == actor
    ]


#: The audit keys of the namespace ``t`` the fixtures use.
STREAM, HEAD = "t:audit", "t:audit:head"


@pytest.fixture
def client(redis_server: EmbeddedRedis) -> redis.Redis:
    return redis.Redis.from_url(redis_server.url)


@pytest.fixture
def jsonl(tmp_path: Path) -> Path:
    return tmp_path / "audit" / "audit.jsonl"


@pytest.fixture
def log(client: redis.Redis, jsonl: Path, clock: Clock) -> Iterator[AuditLog]:
    with AuditLog(client, namespace="t", jsonl_path=jsonl, clock=clock) as audit_log:
        yield audit_log


@pytest.fixture
def filled(log: AuditLog, clock: Clock) -> list[AuditEntry]:
    """Five entries of the kinds the security layer records."""
    entries = []
    for kind, subject in [
        (AuditEvent.REGISTERED, "support"),
        (AuditEvent.GRANTED, "support"),
        (AuditEvent.DENIED_READ, "intern"),
        (AuditEvent.KEY_ROTATED, "internal"),
        (AuditEvent.FORGOTTEN, "user-42"),
    ]:
        entries.append(log.record(kind, actor="admin", subject=subject, zone="internal", n=1))
        clock.advance(seconds=1)
    return entries
