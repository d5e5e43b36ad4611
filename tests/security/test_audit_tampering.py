"""Tampering with the audit log, in Redis or in its JSONL copy: verify reports what was done
(edited, removed, reordered, re-hashed, cut, rewritten, malformed) and where."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis

from hivemem.pool.errors import AuditLogCorrupt, InvalidInput
from hivemem.security import AuditEntry, AuditLog, ProblemKind, VerifyReport, verify_file
from hivemem.security.audit_entry import canonical_json, entry_hash
from tests.security.conftest import HEAD, STREAM


def raw_stream(client: redis.Redis) -> list[bytes]:
    return [fields[b"e"] for _id, fields in client.xrange(STREAM)]


def rewrite_stream(client: redis.Redis, stored: list[bytes]) -> None:
    """What someone with write access to Redis can do: replace the whole stream (XADD cannot
    insert before the last id, and stream entries cannot be edited in place)."""
    client.delete(STREAM)
    for i, line in enumerate(stored, start=1):
        client.xadd(STREAM, {"e": line}, id=f"{i}-0")


def where(report: VerifyReport) -> tuple[ProblemKind, int, int | None]:
    assert report.problem is not None, str(report)
    return report.problem.kind, report.problem.position, report.problem.seq


# -- tampering with the stream ------------------------------------------------------------------


def test_verify_finds_an_edited_stream_entry(
    client: redis.Redis, log: AuditLog, filled: list[AuditEntry]
) -> None:
    """An entry whose content changed (stream rewritten around it) is EDITED at its position."""
    stored = raw_stream(client)
    stored[2] = stored[2].replace(b'"intern"', b'"nobody"')
    rewrite_stream(client, stored)
    assert where(log.verify()) == (ProblemKind.EDITED, 2, 3)


def test_verify_finds_an_edit_whose_own_hash_was_recomputed(
    client: redis.Redis, log: AuditLog, filled: list[AuditEntry]
) -> None:
    """Rehashing the edited entry breaks the link of the entry after it."""
    stored = raw_stream(client)
    record = json.loads(stored[2])
    record["subject"] = "nobody"
    record["hash"] = entry_hash(record)
    stored[2] = canonical_json(record).encode()
    rewrite_stream(client, stored)
    assert where(log.verify()) == (ProblemKind.BROKEN_LINK, 3, 4)


def test_verify_finds_a_removed_stream_entry(
    client: redis.Redis, log: AuditLog, filled: list[AuditEntry]
) -> None:
    """XDEL of one entry shows as REMOVED at the entry after the gap."""
    assert client.xdel(STREAM, "3-0") == 1
    report = log.verify()
    assert where(report) == (ProblemKind.REMOVED, 2, 4)
    assert report.count == 2
    assert report.head == filled[1].anchor


def test_verify_finds_reordered_stream_entries(
    client: redis.Redis, log: AuditLog, filled: list[AuditEntry]
) -> None:
    """Two entries swapped in the stream are REORDERED at the first one out of place."""
    stored = raw_stream(client)
    stored[1], stored[2] = stored[2], stored[1]
    rewrite_stream(client, stored)
    assert where(log.verify()) == (ProblemKind.REORDERED, 1, 3)


def test_verify_finds_a_cut_tail_through_the_head_key(
    client: redis.Redis, log: AuditLog, filled: list[AuditEntry]
) -> None:
    """XDEL of the last entries leaves a sound chain, but the head key records more."""
    client.xdel(STREAM, "4-0", "5-0")
    assert where(log.verify()) == (ProblemKind.TRUNCATED, 3, None)


def test_an_anchor_exposes_a_tail_rewritten_with_every_hash(
    client: redis.Redis, log: AuditLog, filled: list[AuditEntry]
) -> None:
    """A writer who recomputes the chain from seq 3 on and moves the head key passes verify()
    without an anchor, but not against a head recorded before."""
    anchor = filled[3].anchor
    head = filled[1].anchor
    stored = raw_stream(client)[:2]
    for _ in range(3):
        forged = AuditEntry.create(
            head, "granted", ts=filled[0].ts, actor="mallory", subject="x", zone=None, details={}
        )
        stored.append(forged.to_json().encode())
        head = forged.anchor
    rewrite_stream(client, stored)
    client.hset(HEAD, mapping={"seq": head.seq, "hash": head.hash})
    assert log.verify().ok
    assert where(log.verify(anchor=anchor)) == (ProblemKind.REWRITTEN, 3, 4)


def test_a_malformed_stream_entry_is_reported_and_blocks_appends(
    client: redis.Redis, log: AuditLog, filled: list[AuditEntry]
) -> None:
    """An entry written behind hivemem's back is MALFORMED for verify, AuditLogCorrupt for
    readers, and the next append (its seq now behind the stream's last id) is refused."""
    client.xadd(STREAM, {"e": b"{not json"}, id="6-0")
    assert where(log.verify()) == (ProblemKind.MALFORMED, 5, None)
    with pytest.raises(AuditLogCorrupt):
        list(log.entries())
    with pytest.raises(AuditLogCorrupt):
        log.tail(1)
    with pytest.raises(AuditLogCorrupt):
        log.record("granted", actor="admin", subject="s")
    assert client.xlen(STREAM) == 6


def test_an_anchor_recorded_earlier_still_verifies_a_grown_log(
    log: AuditLog, filled: list[AuditEntry]
) -> None:
    """Appending after an anchor was recorded does not disturb it; a bad anchor is refused."""
    anchor = log.head()
    log.record("revoked", actor="admin", subject="support")
    assert log.verify(anchor=anchor).ok
    with pytest.raises(InvalidInput):
        log.verify(anchor=(3, "zz"))


# -- tampering with the JSONL file --------------------------------------------------------------


def rewrite_file(path: Path, stored: list[bytes]) -> None:
    path.write_bytes(b"".join(line + b"\n" for line in stored))


def test_verify_file_finds_an_edited_line(jsonl: Path, filled: list[AuditEntry]) -> None:
    """A changed field in line 3 is EDITED at position 2."""
    stored = jsonl.read_bytes().splitlines()
    stored[2] = stored[2].replace(b'"denied_read"', b'"granted"')
    rewrite_file(jsonl, stored)
    assert where(verify_file(jsonl)) == (ProblemKind.EDITED, 2, 3)


def test_verify_file_finds_a_removed_line(jsonl: Path, filled: list[AuditEntry]) -> None:
    """A deleted line 3 is REMOVED at the line after it."""
    stored = jsonl.read_bytes().splitlines()
    del stored[2]
    rewrite_file(jsonl, stored)
    assert where(verify_file(jsonl)) == (ProblemKind.REMOVED, 2, 4)


def test_verify_file_finds_swapped_lines(jsonl: Path, filled: list[AuditEntry]) -> None:
    """Lines 4 and 5 swapped are REORDERED at position 3."""
    stored = jsonl.read_bytes().splitlines()
    stored[3], stored[4] = stored[4], stored[3]
    rewrite_file(jsonl, stored)
    assert where(verify_file(jsonl)) == (ProblemKind.REORDERED, 3, 5)


def test_verify_file_needs_an_anchor_to_see_a_cut_tail(
    jsonl: Path, filled: list[AuditEntry]
) -> None:
    """Dropping the last lines leaves a valid chain; the recorded head exposes it."""
    rewrite_file(jsonl, jsonl.read_bytes().splitlines()[:3])
    assert verify_file(jsonl).ok
    assert where(verify_file(jsonl, anchor=filled[-1].anchor)) == (ProblemKind.TRUNCATED, 3, None)


def test_verify_file_finds_a_garbage_line(jsonl: Path, filled: list[AuditEntry]) -> None:
    """A line that is not an entry (a partial write, an insertion) is MALFORMED."""
    stored = jsonl.read_bytes().splitlines()
    stored.insert(1, b'{"seq": 2')
    rewrite_file(jsonl, stored)
    assert where(verify_file(jsonl)) == (ProblemKind.MALFORMED, 1, None)
