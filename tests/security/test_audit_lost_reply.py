"""An audit append whose reply is lost, on a real Redis behind a real TCP relay that holds back
replies or requests: the log, its JSONL copy and the caller agree on what was appended."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis

from hivemem.pool.errors import PoolUnavailable
from hivemem.pool.redis_server import EmbeddedRedis
from hivemem.security import AuditLog, verify_file
from tests.relay import Relay


def slow_log(redis_server: EmbeddedRedis, relay: Relay, jsonl: Path) -> AuditLog:
    """An audit log whose connection goes through ``relay`` and waits 0.3 s for a reply."""
    client = redis.Redis.from_url(relay.url(redis_server), socket_timeout=0.3)
    return AuditLog(client, namespace="t", jsonl_path=jsonl)


def test_an_append_whose_reply_is_lost_counts_as_made(
    redis_server: EmbeddedRedis, relay: Relay, tmp_path: Path
) -> None:
    """The script ran, its reply came too late: the log asks Redis again (a new connection),
    finds its entry in the stream, returns it and writes its line, so the JSONL copy has no gap
    and the caller is not told it failed."""
    log = slow_log(redis_server, relay, tmp_path / "audit.jsonl")
    log.record("registered", actor="admin", subject="a1")
    relay.hold_reply = 0.5
    entry = log.record("registered", actor="admin", subject="a2")
    time.sleep(0.6)  # the late reply has passed
    log.record("registered", actor="admin", subject="a3")

    assert entry.seq == 2
    assert [(e.seq, e.subject) for e in log.entries()] == [(1, "a1"), (2, "a2"), (3, "a3")]
    assert verify_file(tmp_path / "audit.jsonl").ok
    assert log.verify().ok


def test_an_append_that_lands_after_its_error_is_written_in_its_place(
    redis_server: EmbeddedRedis, relay: Relay, tmp_path: Path
) -> None:
    """The request was held up: the caller is told PoolUnavailable, then the script runs after
    all. The next append finds that entry as the head and writes its line first, so the JSONL
    copy matches the log."""
    log = slow_log(redis_server, relay, tmp_path / "audit.jsonl")
    log.record("registered", actor="admin", subject="a1")
    relay.hold_requests = 0.6
    with pytest.raises(PoolUnavailable):
        log.record("registered", actor="admin", subject="a2")
    time.sleep(0.8)  # the held request reaches Redis and runs
    relay.hold_requests = 0.0
    log.record("registered", actor="admin", subject="a3")

    assert [(e.seq, e.subject) for e in log.entries()] == [(1, "a1"), (2, "a2"), (3, "a3")]
    report = verify_file(tmp_path / "audit.jsonl")
    assert report.ok, report
    lines = (tmp_path / "audit.jsonl").read_text().splitlines()
    assert len(lines) == 3
