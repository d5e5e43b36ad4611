"""Damaged audit entries, in Redis or in the JSONL copy: verification reports them (MALFORMED or
EDITED, at their position) and never raises; readers raise AuditLogCorrupt; details too deep to
record and files that cannot be read are refused with InvalidInput."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis

from hivemem.pool.errors import AuditLogCorrupt, InvalidInput
from hivemem.security import (
    GENESIS,
    Anchor,
    AuditEntry,
    AuditLog,
    ProblemKind,
    VerifyReport,
    verify,
    verify_file,
)
from hivemem.security.audit_entry import MAX_DETAILS_DEPTH, canonical_json
from tests.security.conftest import HEAD, STREAM

#: What the parser cannot take: nested far deeper than Python's recursion limit.
DEEP_ARRAY = b"[" * 200_000 + b"]" * 200_000
DEEP_OBJECT = b'{"hash":"' + b"0" * 64 + b'","details":' + DEEP_ARRAY + b"}"
T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def raw_stream(client: redis.Redis) -> list[bytes]:
    return [fields[b"e"] for _id, fields in client.xrange(STREAM)]


def rewrite_stream(client: redis.Redis, stored: list[bytes]) -> None:
    """Replace the whole stream, as someone with write access to Redis can."""
    client.delete(STREAM)
    for i, line in enumerate(stored, start=1):
        client.xadd(STREAM, {"e": line}, id=f"{i}-0")


def rewrite_file(path: Path, stored: list[bytes]) -> None:
    path.write_bytes(b"".join(line + b"\n" for line in stored))


def where(report: VerifyReport) -> tuple[ProblemKind, int, int | None]:
    assert report.problem is not None, str(report)
    return report.problem.kind, report.problem.position, report.problem.seq


def nested(depth: int) -> dict[str, Any]:
    """A details value with ``depth`` dicts nested below the top one."""
    top: dict[str, Any] = {}
    inner = top
    for _ in range(depth):
        inner["a"] = {}
        inner = inner["a"]
    return top


def duplicated(line: bytes) -> bytes:
    """``line`` (the entry of mallory's forced grant) with a first, hidden value of its actor and
    its ``forced`` detail: the last ones, which a last-key-wins parser keeps, still hash."""
    text = line.decode()
    assert '"actor":"admin"' in text
    assert '"forced":true' in text
    text = text.replace('"actor":"admin"', '"actor":"mallory","actor":"admin"')
    text = text.replace('"forced":true', '"forced":false,"forced":true')
    return text.encode()


# -- entries nobody can parse -------------------------------------------------------------------


@pytest.mark.parametrize(
    "damage", [DEEP_ARRAY, DEEP_OBJECT, b"\xff\xfe{}"], ids=["array", "object", "not-utf8"]
)
def test_an_unparseable_stream_entry_is_malformed_for_verify_and_corrupt_for_readers(
    client: redis.Redis, log: AuditLog, filled: list[AuditEntry], damage: bytes
) -> None:
    """An entry replaced by text nested too deep to parse (or not UTF-8) is MALFORMED at its
    position; entries() and tail() raise AuditLogCorrupt, not RecursionError."""
    stored = raw_stream(client)
    stored[2] = damage
    rewrite_stream(client, stored)

    report = log.verify()

    assert where(report) == (ProblemKind.MALFORMED, 2, None)
    assert report.count == 2
    assert report.head == filled[1].anchor
    with pytest.raises(AuditLogCorrupt):
        list(log.entries())
    with pytest.raises(AuditLogCorrupt):
        log.tail(5)


def test_an_unparseable_line_of_the_file_is_malformed(
    jsonl: Path, filled: list[AuditEntry]
) -> None:
    """verify_file reports a line nested too deep to parse as MALFORMED, at its line."""
    stored = jsonl.read_bytes().splitlines()
    stored[3] = DEEP_ARRAY
    rewrite_file(jsonl, stored)
    assert where(verify_file(jsonl)) == (ProblemKind.MALFORMED, 3, None)


def test_a_deep_entry_after_a_gap_does_not_break_the_look_ahead() -> None:
    """Telling a removal from a reordering reads the entries after a gap: one of them too deep
    to parse leaves the verdict REMOVED."""
    stored: list[str | bytes] = []
    head = Anchor(0, GENESIS)
    for i in range(4):
        entry = AuditEntry.create(
            head, "granted", ts=T0, actor="admin", subject=f"a-{i}", zone=None, details={}
        )
        stored.append(entry.to_json())
        head = entry.anchor
    report = verify([stored[0], stored[2], DEEP_ARRAY, stored[3]])
    assert where(report) == (ProblemKind.REMOVED, 1, 3)


# -- details too deep to record -----------------------------------------------------------------


def test_details_nested_too_deep_are_refused_and_append_nothing(
    client: redis.Redis, log: AuditLog, jsonl: Path
) -> None:
    """Details nested 2000 levels deep (or forming a cycle) raise InvalidInput naming the
    details, and leave the stream, the head and the file untouched."""
    cycle: dict[str, object] = {}
    cycle["loop"] = cycle
    for details in (nested(2000), nested(MAX_DETAILS_DEPTH + 1), cycle):
        with pytest.raises(InvalidInput, match="deeper") as raised:
            log.record("granted", actor="admin", subject="s", **details)
        assert raised.value.field == "details"
    deep_list: list[object] = []
    for _ in range(2000):
        deep_list = [deep_list]
    with pytest.raises(InvalidInput, match="deeper"):
        log.record("granted", actor="admin", subject="s", ids=deep_list)
    assert client.xlen(STREAM) == 0
    assert client.exists(HEAD) == 0
    assert jsonl.read_bytes() == b""


def test_details_up_to_the_depth_limit_are_recorded_and_verify(log: AuditLog, jsonl: Path) -> None:
    """Details nested exactly MAX_DETAILS_DEPTH levels are an ordinary entry."""
    entry = log.record("granted", actor="admin", subject="s", **nested(MAX_DETAILS_DEPTH))
    assert list(log.entries()) == [entry]
    assert log.verify().ok
    assert verify_file(jsonl).ok


# -- stored text that is not the canonical JSON -------------------------------------------------


def forced_grant(log: AuditLog) -> AuditEntry:
    """Three entries, the second a forced grant by admin; returns that one."""
    log.record("registered", actor="admin", subject="support")
    entry = log.record("granted", actor="admin", subject="support", forced=True, ratio=0.5)
    log.record("revoked", actor="admin", subject="support")
    return entry


def test_a_stream_entry_with_duplicate_keys_is_edited(client: redis.Redis, log: AuditLog) -> None:
    """An entry rewritten with hidden first values of its keys (which a grep or a first-key-wins
    parser reads) is EDITED at its position, though the values a last-key-wins parser keeps
    still hash to its hash."""
    forced_grant(log)
    stored = raw_stream(client)
    stored[1] = duplicated(stored[1])
    assert json.loads(stored[1])["actor"] == "admin"  # what the hash covers
    rewrite_stream(client, stored)

    report = log.verify()

    assert where(report) == (ProblemKind.EDITED, 1, 2)
    assert report.problem is not None
    assert "canonical" in report.problem.message


def test_a_file_line_with_duplicate_keys_is_edited(log: AuditLog, jsonl: Path) -> None:
    """The same forgery in the JSONL copy is EDITED at its line."""
    forced_grant(log)
    stored = jsonl.read_bytes().splitlines()
    stored[1] = duplicated(stored[1])
    rewrite_file(jsonl, stored)
    assert where(verify_file(jsonl)) == (ProblemKind.EDITED, 1, 2)


@pytest.mark.parametrize(
    "respell",
    [
        lambda record: json.dumps(record, sort_keys=True).encode(),  # spaces
        lambda record: json.dumps(dict(reversed(record.items())), separators=(",", ":")).encode(),
        lambda record: canonical_json(record).replace('"ratio":0.5', '"ratio":5e-1').encode(),
        lambda record: (
            json.dumps(record, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
            .replace('"admin"', '"\\u0061dmin"')
            .encode()
        ),
        lambda record: canonical_json(record).encode() + b" ",
    ],
    ids=["whitespace", "key-order", "number-spelling", "escaped-letter", "trailing-space"],
)
def test_any_other_spelling_of_an_entry_is_edited(
    client: redis.Redis, log: AuditLog, respell: Any
) -> None:
    """Text that parses to the very same sound entry but is not its canonical JSON is EDITED."""
    forced_grant(log)
    stored = raw_stream(client)
    record = json.loads(stored[1])
    stored[1] = respell(record)
    assert stored[1] != canonical_json(record).encode()
    rewrite_stream(client, stored)
    assert where(log.verify()) == (ProblemKind.EDITED, 1, 2)


# -- files that cannot be read ------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["directory", "missing"])
def test_a_file_that_cannot_be_read_raises_invalid_input(tmp_path: Path, kind: str) -> None:
    """verify_file on a directory or a missing path raises InvalidInput naming the path."""
    path = tmp_path / "audit"
    if kind == "directory":
        path.mkdir()
    with pytest.raises(InvalidInput, match="cannot read the audit file") as raised:
        verify_file(path)
    assert raised.value.field == "file"
    assert str(path) in str(raised.value)
