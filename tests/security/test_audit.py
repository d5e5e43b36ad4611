"""The audit log on a real Redis: appends through the compare-and-set script keep one chain
across threads and processes, the JSONL copy matches the stream, reads come back in seq order,
and bad input or an unreachable Redis append nothing."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest
import redis
import structlog

from hivemem.pool.errors import InvalidIdentifier, InvalidInput, PoolUnavailable
from hivemem.pool.redis_server import EmbeddedRedis
from hivemem.security import GENESIS, Anchor, AuditEntry, AuditLog, verify_file
from hivemem.security import audit as audit_module
from tests.conftest import Clock
from tests.security.conftest import HEAD, STREAM
from tests.waiting import wait_for


def test_record_appends_a_linked_entry_and_moves_the_head(
    log: AuditLog, filled: list[AuditEntry], clock: Clock
) -> None:
    """Entries get seq 1..n, link to their predecessor, carry the clock's time; head() is the
    last one."""
    assert [e.seq for e in filled] == [1, 2, 3, 4, 5]
    assert [e.prev for e in filled] == [GENESIS] + [e.hash for e in filled[:-1]]
    assert filled[0].ts == Clock().now
    assert log.head() == filled[-1].anchor
    report = log.verify()
    assert report.ok
    assert report.count == 5
    assert report.head == filled[-1].anchor


def test_an_empty_log_has_the_genesis_head_and_verifies(log: AuditLog) -> None:
    """Nothing recorded: head (0, GENESIS), verify ok with no entries, no keys written."""
    assert log.head() == Anchor(0, GENESIS)
    assert log.verify().ok
    assert log.verify().count == 0
    assert log.client.keys("*") == []


def test_tail_and_entries_read_in_seq_order(
    log: AuditLog, filled: list[AuditEntry], monkeypatch: pytest.MonkeyPatch
) -> None:
    """tail(n) is the last n, oldest first; entries(start_seq) pages through the rest."""
    monkeypatch.setattr(audit_module, "_PAGE", 2)
    assert log.tail(2) == filled[-2:]
    assert log.tail(0) == []
    assert log.tail(99) == filled
    assert list(log.entries()) == filled
    assert list(log.entries(start_seq=3)) == filled[2:]
    assert list(log.entries(start_seq=6)) == []
    assert log.verify().ok  # paged verification too


def test_the_jsonl_file_holds_the_same_lines_as_the_stream(
    client: redis.Redis, jsonl: Path, filled: list[AuditEntry]
) -> None:
    """Each appended entry is one canonical JSON line, byte for byte the stream's field."""
    assert jsonl.read_bytes().splitlines() == [f[b"e"] for _id, f in client.xrange(STREAM)]
    report = verify_file(jsonl)
    assert report.ok
    assert report.count == 5
    assert report.head == filled[-1].anchor


def test_a_file_that_cannot_take_the_line_costs_no_entry_and_duplicates_none(
    client: redis.Redis,
) -> None:
    """The JSONL copy on a full disk (/dev/full: every write fails with ENOSPC): record()
    returns the entry, which is in Redis once; the failure is logged, so that a caller has no
    reason to record again."""
    full = Path("/dev/full")
    with (
        structlog.testing.capture_logs() as logs,
        AuditLog(client, namespace="t", jsonl_path=full) as audit_log,
    ):
        entry = audit_log.record("registered", actor="admin", subject="a1")
        audit_log.record("registered", actor="admin", subject="a2")
    assert [e.seq for e in audit_log.entries()] == [entry.seq, entry.seq + 1]
    assert audit_log.verify().ok
    failed = [e for e in logs if e["event"] == "audit_file_write_failed"]
    assert {e.get("seq") for e in failed} >= {1, 2}


def test_the_jsonl_sink_ignores_the_global_structlog_configuration(
    client: redis.Redis, jsonl: Path
) -> None:
    """A console renderer configured globally does not change the file's lines."""
    saved = structlog.get_config()
    structlog.configure(processors=[structlog.dev.ConsoleRenderer()])
    try:
        with AuditLog(client, namespace="t", jsonl_path=jsonl) as audit_log:
            entry = audit_log.record("revoked", actor="admin", subject="tech")
    finally:
        structlog.configure(**saved)
    assert jsonl.read_text() == entry.to_json() + "\n"


CHILD = """
import sys
import time
from pathlib import Path

import redis

from hivemem.security import AuditLog

url, path, name, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
client = redis.Redis.from_url(url)
client.incr("go:ready")
while not client.exists("go"):  # all children start writing together
    time.sleep(0.002)
with AuditLog(client, namespace="t", jsonl_path=Path(path) if path else None) as log:
    for i in range(count):
        log.record("rejected_message", actor=name, subject="sender", i=i)
"""


def appends_tried(client: redis.Redis) -> int:
    """Calls of the append script so far (each lost race is one more call than entries)."""
    stats = client.info("commandstats")
    return sum(stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in ("evalsha", "eval"))


def assert_one_chain(
    log: AuditLog, jsonl: Path | None, writers: list[str], per_writer: int
) -> None:
    """Every entry is there once, seqs contiguous, each writer's entries in its order, and the
    stream (and the shared file, if any) verifies."""
    total = len(writers) * per_writer
    entries = list(log.entries())
    assert [e.seq for e in entries] == list(range(1, total + 1))
    for name in writers:
        assert [e.details["i"] for e in entries if e.actor == name] == list(range(per_writer))
    stream = log.verify()
    assert stream.ok, str(stream)
    assert stream.count == total
    if jsonl is not None:
        copy = verify_file(jsonl)
        assert copy.ok, str(copy)
        assert (copy.count, copy.head) == (total, stream.head)


@pytest.mark.slow
@pytest.mark.parametrize("shared_file", [True, False], ids=["shared-file", "redis-only"])
def test_writers_in_several_processes_keep_one_chain(
    redis_server: EmbeddedRedis, client: redis.Redis, jsonl: Path, shared_file: bool
) -> None:
    """Four processes appending at once leave one valid chain; without a shared file (whose
    lock serialises them) they race on the head and retry."""
    writers, per_writer = [f"proc-{i}" for i in range(4)], 100
    path = str(jsonl) if shared_file else ""
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, redis_server.url, path, name, str(per_writer)]
        )
        for name in writers
    ]
    assert wait_for(lambda: int(client.get("go:ready") or 0) == len(writers), timeout_s=60)
    client.set("go", 1)
    assert [child.wait(timeout=120) for child in children] == [0] * len(writers)
    client.delete("go", "go:ready")
    with AuditLog(client, namespace="t") as log:
        assert_one_chain(log, jsonl if shared_file else None, writers, per_writer)
    if not shared_file:  # beyond each child's first try (stale head) and script load
        assert appends_tried(client) > len(writers) * (per_writer + 2)  # races did happen


@pytest.mark.parametrize("shared_file", [True, False], ids=["shared-file", "redis-only"])
def test_writers_in_several_threads_keep_one_chain(
    client: redis.Redis, jsonl: Path, shared_file: bool
) -> None:
    """Threads sharing one AuditLog and threads with their own append to one chain."""
    writers, per_writer = [f"thread-{i}" for i in range(6)], 25
    path = jsonl if shared_file else None
    logs = [AuditLog(client, namespace="t", jsonl_path=path) for _ in range(4)]
    errors: list[BaseException] = []

    def write(audit_log: AuditLog, name: str) -> None:
        try:
            for i in range(per_writer):
                audit_log.record("denied_read", actor=name, subject="record", i=i)
        except BaseException as error:  # noqa: BLE001 - handed to the test thread
            errors.append(error)

    threads = [  # threads 0-2 share logs[0]; threads 3-5 have their own
        threading.Thread(target=write, args=(logs[max(0, i - 2)], name))
        for i, name in enumerate(writers)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert_one_chain(logs[0], path, writers, per_writer)
    for audit_log in logs:
        audit_log.close()


@pytest.mark.parametrize(
    ("kind", "fields"),
    [
        ("granted", {"handle": object()}),
        ("granted", {"ids": {"a"}}),
        ("granted", {"ratio": float("nan")}),
        ("granted", {"payload": b"raw"}),
        ("granted", {"blob": "x" * 5000}),
        ("exploded", {}),
        ("granted", {"actor": ""}),
        ("granted", {"subject": "s" * 300}),
    ],
    ids=["object", "set", "nan", "bytes", "too-big", "unknown-kind", "empty-actor", "long-subject"],
)
def test_invalid_input_appends_nothing(
    client: redis.Redis, log: AuditLog, jsonl: Path, kind: str, fields: dict[str, object]
) -> None:
    """InvalidInput leaves the stream, the head and the file untouched."""
    arguments: dict[str, object] = {"actor": "admin", "subject": "s", **fields}
    with pytest.raises(InvalidInput):
        log.record(kind, **arguments)  # type: ignore[arg-type]
    assert client.xlen(STREAM) == 0
    assert client.exists(HEAD) == 0
    assert jsonl.read_bytes() == b""
    assert log.record("granted", actor="admin", subject="s").seq == 1


INJECTIONS = [
    "*",
    "t:audit:head",
    "x\r\nFLUSHALL\r\n",
    "' OR 1=1 --",
    '"},"seq":99,"x":{"',
    "line\u2028separator\u0085next",
    "../../etc/passwd",
    "\x00nul",
]


def test_injection_strings_are_stored_verbatim_as_data(
    client: redis.Redis, log: AuditLog, jsonl: Path
) -> None:
    """Hostile actor, subject and details strings round-trip exactly, touch no other key, and
    keep the stream and the file verifiable, one line per entry."""
    for text in INJECTIONS:
        log.record("rejected_message", actor=text, subject=text, zone=text[:64], reason=text)
    read = list(log.entries())
    assert [(e.actor, e.subject, e.details["reason"]) for e in read] == [
        (t, t, t) for t in INJECTIONS
    ]
    assert sorted(client.keys("*")) == [STREAM.encode(), HEAD.encode()]
    assert len(jsonl.read_bytes().splitlines()) == len(INJECTIONS)
    assert log.verify().ok
    assert verify_file(jsonl).ok


@pytest.mark.parametrize("namespace", ["", "a b", "x:*", "ns\r\nFLUSHALL", "n" * 65, "ns}{"])
def test_a_namespace_that_could_not_be_a_key_prefix_is_refused(
    client: redis.Redis, namespace: str
) -> None:
    """The namespace builds Redis keys, so it is checked again here: InvalidIdentifier."""
    with pytest.raises(InvalidIdentifier):
        AuditLog(client, namespace=namespace)
    assert client.keys("*") == []


def test_an_unreachable_redis_raises_pool_unavailable(
    redis_server: EmbeddedRedis, log: AuditLog, jsonl: Path
) -> None:
    """With Redis down, record and verify raise PoolUnavailable and the file is unchanged."""
    log.record("registered", actor="admin", subject="support")
    before = jsonl.read_bytes()
    redis_server.stop()
    with pytest.raises(PoolUnavailable):
        log.record("deregistered", actor="admin", subject="support")
    with pytest.raises(PoolUnavailable):
        log.verify()
    assert jsonl.read_bytes() == before
