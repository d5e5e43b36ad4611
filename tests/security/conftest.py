"""Fixtures of the security tests: a client of the test's real Redis, and an audit log on it
with a JSONL copy under the test's directory."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from hivemem.pool.redis_server import EmbeddedRedis
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
