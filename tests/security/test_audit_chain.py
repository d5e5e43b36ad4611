"""Audit entries and chain verification, without Redis: hashing, validation, and what verify
reports for each kind of tampering."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest

from hivemem.pool.errors import InvalidInput
from hivemem.security import GENESIS, Anchor, AuditEntry, AuditEvent, ProblemKind, verify
from hivemem.security.audit_entry import canonical_json, entry_hash

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def chain(n: int) -> list[AuditEntry]:
    """``n`` linked entries, one second apart."""
    entries: list[AuditEntry] = []
    head = Anchor(0, GENESIS)
    for i in range(n):
        entry = AuditEntry.create(
            head,
            AuditEvent.GRANTED,
            ts=T0 + timedelta(seconds=i),
            actor="admin",
            subject=f"agent-{i}",
            zone="internal",
            details={"i": i},
        )
        entries.append(entry)
        head = entry.anchor
    return entries


def lines(entries: list[AuditEntry]) -> list[str]:
    return [entry.to_json() for entry in entries]


def test_first_entry_links_to_genesis_and_each_next_to_its_predecessor() -> None:
    """seq counts from 1; prev is all zeros first, then the previous entry's hash."""
    entries = chain(3)
    assert [e.seq for e in entries] == [1, 2, 3]
    assert [e.prev for e in entries] == [GENESIS, entries[0].hash, entries[1].hash]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("seq", 7),
        ("ts", "2026-01-01T12:00:01.000000+00:00"),
        ("kind", "revoked"),
        ("actor", "mallory"),
        ("subject", "someone-else"),
        ("zone", "secret"),
        ("details", {"i": 1}),
        ("prev", "f" * 64),
        ("v", 2),
    ],
)
def test_the_hash_covers_every_field(field: str, value: object) -> None:
    """Changing any one field of an entry changes the hash its content calls for."""
    record = chain(1)[0].record()
    assert entry_hash(record) == record["hash"]
    assert entry_hash({**record, field: value}) != record["hash"]


def test_the_hash_is_sha256_of_the_canonical_json_without_the_hash() -> None:
    """The stored line is sorted, whitespace-free ASCII JSON, and the hash is over the rest."""
    import hashlib  # noqa: PLC0415 - only this test recomputes by hand

    entry = chain(1)[0]
    record = json.loads(entry.to_json())
    assert entry.to_json() == json.dumps(record, sort_keys=True, separators=(",", ":"))
    del record["hash"]
    assert entry.hash == hashlib.sha256(canonical_json(record).encode()).hexdigest()


def test_entries_round_trip_through_json() -> None:
    """Parsing a stored line gives back the same entry, ts in UTC."""
    entry = AuditEntry.create(
        Anchor(0, GENESIS),
        "key_rotated",
        ts=datetime(2026, 1, 1, 14, 0, tzinfo=timezone(timedelta(hours=2))),
        actor="cli",
        subject="zone-key",
        zone=None,
        details={"key_ids": ("k1", "k2"), "nested": {"ok": True, "ratio": 0.5}},
    )
    assert entry.ts == T0
    assert entry.ts.tzinfo == UTC
    assert entry.details == {"key_ids": ["k1", "k2"], "nested": {"ok": True, "ratio": 0.5}}
    assert AuditEntry.from_json(entry.to_json()) == entry


@pytest.mark.parametrize(
    "details",
    [
        {"what": object()},
        {"ids": {"a", "b"}},
        {"ratio": float("nan")},
        {"ratio": float("inf")},
        {"raw": b"bytes"},
        {"nested": {1: "int key"}},
        {"big": "x" * 5000},
    ],
    ids=["object", "set", "nan", "inf", "bytes", "int-key", "too-big"],
)
def test_details_must_be_small_plain_json(details: dict[str, object]) -> None:
    """Details that JSON cannot hold exactly, or that are too large, raise InvalidInput."""
    with pytest.raises(InvalidInput) as raised:
        AuditEntry.create(
            Anchor(0, GENESIS), "granted", ts=T0, actor="a", subject="s", zone=None, details=details
        )
    assert raised.value.field is not None
    assert raised.value.field.startswith("details")


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"kind": "exploded"}, "kind"),
        ({"actor": ""}, "actor"),
        ({"subject": "s" * 257}, "subject"),
        ({"zone": "z" * 65}, "zone"),
        ({"ts": datetime(2026, 1, 1)}, "ts"),  # noqa: DTZ001 - the naive datetime under test
    ],
)
def test_malformed_fields_raise_invalid_input(changes: dict[str, object], field: str) -> None:
    """An unknown kind, an empty or overlong id or zone, or a naive ts are refused."""
    arguments: dict[str, object] = {
        "kind": "granted",
        "ts": T0,
        "actor": "a",
        "subject": "s",
        "zone": None,
        "details": {},
        **changes,
    }
    with pytest.raises(InvalidInput) as raised:
        AuditEntry.create(Anchor(0, GENESIS), **arguments)  # type: ignore[arg-type]
    assert raised.value.field == field


def test_an_intact_chain_verifies_from_text_or_entries() -> None:
    """verify accepts stored lines or entries and reports the count and head."""
    entries = chain(4)
    for given in (lines(entries), entries, [line.encode() for line in lines(entries)]):
        report = verify(given)
        assert report.ok
        assert report.count == 4
        assert report.head == entries[-1].anchor


def test_an_empty_log_verifies_with_the_genesis_head() -> None:
    """No entries: ok, count 0, head (0, GENESIS)."""
    report = verify([])
    assert report.ok
    assert report.count == 0
    assert report.head == Anchor(0, GENESIS)


def test_an_edited_entry_is_reported_where_it_is() -> None:
    """A field changed without recomputing the hash is EDITED at that position."""
    stored = lines(chain(5))
    stored[2] = stored[2].replace('"agent-2"', '"agent-X"')
    report = verify(stored)
    assert report.problem is not None
    assert (report.problem.kind, report.problem.position, report.problem.seq) == (
        ProblemKind.EDITED,
        2,
        3,
    )
    assert report.count == 2
    assert report.head.seq == 2


def test_an_entry_rehashed_after_an_edit_breaks_the_next_link() -> None:
    """Recomputing the edited entry's own hash moves the failure to the next entry's link."""
    records = [entry.record() for entry in chain(5)]
    records[2]["subject"] = "agent-X"
    records[2]["hash"] = entry_hash(records[2])
    report = verify([canonical_json(r) for r in records])
    assert report.problem is not None
    assert (report.problem.kind, report.problem.position) == (ProblemKind.BROKEN_LINK, 3)


def test_a_missing_entry_is_removed() -> None:
    """A gap in seq that nothing later fills is REMOVED at the entry after the gap."""
    stored = lines(chain(5))
    del stored[2]
    report = verify(stored)
    assert report.problem is not None
    assert (report.problem.kind, report.problem.position, report.problem.seq) == (
        ProblemKind.REMOVED,
        2,
        4,
    )
    assert "seq 3..3" in report.problem.message


def test_a_missing_first_entry_is_removed() -> None:
    """A log that does not start at seq 1 lost its beginning."""
    report = verify(lines(chain(3))[1:])
    assert report.problem is not None
    assert (report.problem.kind, report.problem.position) == (ProblemKind.REMOVED, 0)


@pytest.mark.parametrize(
    ("order", "position"),
    [([0, 2, 1, 3], 1), ([0, 3, 1, 2], 1), ([0, 1, 2, 3, 2], 4)],
    ids=["swapped", "moved-up", "duplicated"],
)
def test_reordered_or_repeated_entries_are_reordered(order: list[int], position: int) -> None:
    """An entry before a lower seq (or a seq seen again) is REORDERED, not REMOVED."""
    stored = lines(chain(4))
    report = verify([stored[i] for i in order])
    assert report.problem is not None
    assert (report.problem.kind, report.problem.position) == (ProblemKind.REORDERED, position)


def test_unparseable_and_non_finite_entries_are_malformed() -> None:
    """A line that is not an entry, or holds a number JSON-as-stored cannot hash, is MALFORMED."""
    stored = lines(chain(3))
    for bad in ("not json", "[1, 2]", '{"hash": "x", "seq": 1e999}'):
        report = verify([*stored[:1], bad, *stored[1:]])
        assert report.problem is not None
        assert (report.problem.kind, report.problem.position) == (ProblemKind.MALFORMED, 1)


def test_anchors_expose_a_cut_tail_and_a_rewritten_chain() -> None:
    """An anchor past the end is TRUNCATED; a sound entry that differs from its anchor is
    REWRITTEN; a matching anchor passes."""
    entries = chain(5)
    assert verify(entries, anchors=[entries[3].anchor]).ok
    cut = verify(entries[:3], anchors=[entries[3].anchor])
    assert cut.problem is not None
    assert (cut.problem.kind, cut.problem.position) == (ProblemKind.TRUNCATED, 3)
    forged = entries[:2]  # keep seq 1-2, forge 3-5 with every hash recomputed
    head = forged[-1].anchor
    for i in range(2, 5):
        forged.append(
            AuditEntry.create(
                head, "granted", ts=T0, actor="mallory", subject=f"agent-{i}", zone=None, details={}
            )
        )
        head = forged[-1].anchor
    assert verify(forged).ok  # a fully recomputed tail passes without an anchor...
    report = verify(forged, anchors=[entries[3].anchor])
    assert report.problem is not None  # ...and fails against one recorded before
    assert (report.problem.kind, report.problem.position) == (ProblemKind.REWRITTEN, 3)


def test_a_malformed_anchor_is_refused() -> None:
    """Anchors are (seq >= 0, 64 hex digits), and seq 0 (the empty log) comes with the 64
    zeros of the chain's start: another hash there was compared with nothing and passed."""
    with pytest.raises(InvalidInput):
        verify([], anchors=[Anchor(1, "nothex")])
    with pytest.raises(InvalidInput):
        verify([], anchors=[Anchor(-1, GENESIS)])
    with pytest.raises(InvalidInput, match="seq 0"):
        verify([], anchors=[Anchor(0, "f" * 64)])
    assert verify([], anchors=[Anchor(0, GENESIS)]).ok
