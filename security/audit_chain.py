"""Verifying the audit log's hash chain, from its first entry. No I/O.

Each entry (:mod:`hivemem.security.audit_entry`) holds the SHA-256 of the entry before it
(``prev``; all zeros for the first) and its own ``hash``, the SHA-256 of the canonical JSON of
every other field (sorted keys, no whitespace, ASCII). :func:`verify` recomputes both, so it
detects any entry that was edited, removed, reordered or spliced in, and says where. It also
requires each stored entry to be exactly that canonical JSON (its ``hash`` included): text that
parses to a sound entry but is spelled otherwise, a duplicate key above all (``"actor":
"mallory","actor":"admin"``: a parser keeping the last one hashes ``admin``, a grep or a parser
keeping the first one reads ``mallory``), is EDITED. An entry that cannot be parsed at all (not
JSON, not UTF-8, nested too deep for the parser) is MALFORMED; verification never raises on
what the log holds.

What the chain does not resist on its own: whoever can write the log can rewrite its whole tail
(or all of it) and recompute every hash, and can cut entries off its end. The defence is an
*anchor*: record :class:`Anchor` ``(seq, hash)`` of the head somewhere the writer cannot reach
(a ticket, another system's log, a signed note) and pass it to :func:`verify` later; a rewrite
from that entry or earlier, or a cut before it, then fails. Entries after the latest anchor are
only as trustworthy as the log's storage.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from hivemem.pool.errors import InvalidInput
from hivemem.security.audit_entry import (
    GENESIS,
    Anchor,
    AuditEntry,
    check_anchor,
    entry_hash,
    is_canonical,
    load_record,
)


class ProblemKind(StrEnum):
    """Why a log failed verification (the first problem found, in reading order)."""

    MALFORMED = "malformed"  # not parseable as an entry of this format
    EDITED = "edited"  # the entry's hash does not match its content, or its stored text is
    # not the canonical JSON of its content (a duplicate key that readers may take differently)
    REMOVED = "removed"  # seqs are missing before this entry and appear nowhere later
    REORDERED = "reordered"  # the entry comes before a lower seq, or after a higher or equal one
    BROKEN_LINK = "broken_link"  # prev is not the hash of the entry before: one was replaced
    REWRITTEN = "rewritten"  # a sound entry differs from an anchor recorded for its seq
    TRUNCATED = "truncated"  # the log ends before an anchor's seq


@dataclass(frozen=True, slots=True)
class Problem:
    """Where verification failed: ``position`` is the 0-based index in reading order (for a JSONL
    file, the line number minus one; ``count`` past the end for TRUNCATED); ``seq`` is the seq
    the entry claims (None when malformed or past the end)."""

    kind: ProblemKind
    position: int
    seq: int | None
    message: str


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """Outcome of a verification: ``count`` entries verified sound from the start, ``head`` the
    last of them (an anchor to record), and the first ``problem``, if any."""

    count: int
    head: Anchor
    problem: Problem | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None

    def __str__(self) -> str:
        if self.problem is None:
            return f"ok: {self.count} entries, head seq {self.head.seq} hash {self.head.hash}"
        return (
            f"{self.problem.kind.value} at position {self.problem.position}: {self.problem.message}"
        )


def verify(
    entries: Iterable[str | bytes | AuditEntry], *, anchors: Iterable[Anchor] = ()
) -> VerifyReport:
    """Check a log from its first entry, given in stored order (JSON text or entries), against
    the chain and the ``anchors``. Reads everything once; stops at the first problem (after
    looking ahead, for a gap, to tell a removal from a reordering)."""
    expected = {anchor.seq: anchor.hash for anchor in map(check_anchor, anchors)}
    head, count = Anchor(0, GENESIS), 0
    stream = iter(entries)
    for position, item in enumerate(stream):
        record = _peek(item)
        problem = _check(item, record, position, head, rest=stream, anchors=expected)
        if problem is not None:
            return VerifyReport(count, head, problem)
        assert record is not None  # _check found it sound
        head, count = Anchor(record["seq"], record["hash"]), count + 1
    beyond = [seq for seq in expected if seq > head.seq]
    if beyond:
        message = f"the log ends at seq {head.seq} but an anchor records seq {max(beyond)}"
        return VerifyReport(count, head, Problem(ProblemKind.TRUNCATED, count, None, message))
    return VerifyReport(count, head)


def _check(
    item: str | bytes | AuditEntry,
    record: dict[str, Any] | None,
    position: int,
    head: Anchor,
    *,
    rest: Iterator[str | bytes | AuditEntry],
    anchors: Mapping[int, str],
) -> Problem | None:
    """The problem with the entry at ``position`` after ``head`` (``item`` as stored,
    ``record`` parsed from it), or None when it is sound."""
    if record is None or not isinstance(record.get("hash"), str):
        return Problem(ProblemKind.MALFORMED, position, None, "not a JSON object with a hash")
    claimed = record.get("seq") if isinstance(record.get("seq"), int) else None
    try:
        intact = entry_hash(record) == record["hash"]
        canonical = isinstance(item, AuditEntry) or is_canonical(item, record)
    except ValueError:  # NaN or an infinity: JSON text can hold them, an entry cannot
        return Problem(ProblemKind.MALFORMED, position, claimed, "holds a non-finite number")
    except RecursionError:  # parsed, but too deep to encode again
        return Problem(ProblemKind.MALFORMED, position, claimed, "nests too deep to encode")
    if not intact:
        return Problem(ProblemKind.EDITED, position, claimed, "its hash does not match its content")
    if not canonical:
        message = (
            "its stored text is not the canonical JSON of its content (a duplicate key, "
            "extra whitespace, key order or number spelling): another reader could see "
            "other facts"
        )
        return Problem(ProblemKind.EDITED, position, claimed, message)
    try:
        entry = AuditEntry.from_record(record)
    except InvalidInput as error:
        return Problem(ProblemKind.MALFORMED, position, claimed, f"not a format-1 entry: {error}")
    seq, gap = entry.seq, range(head.seq + 1, entry.seq)
    if seq <= head.seq:
        message = f"seq {seq} comes after seq {head.seq}"
        return Problem(ProblemKind.REORDERED, position, seq, message)
    if gap:
        missing = f"seq {gap.start}..{gap.stop - 1}"
        if any(record is not None and record.get("seq") in gap for record in map(_peek, rest)):
            message = f"seq {seq} comes before {missing}, which appear later"
            return Problem(ProblemKind.REORDERED, position, seq, message)
        return Problem(ProblemKind.REMOVED, position, seq, f"{missing} missing before seq {seq}")
    if entry.prev != head.hash:
        message = f"seq {seq} does not link to seq {head.seq}: one of them was replaced"
        return Problem(ProblemKind.BROKEN_LINK, position, seq, message)
    if anchors.get(seq, entry.hash) != entry.hash:
        message = f"seq {seq} differs from the anchor recorded for it: the chain was rewritten"
        return Problem(ProblemKind.REWRITTEN, position, seq, message)
    return None


def _peek(item: str | bytes | AuditEntry) -> dict[str, Any] | None:
    return item.record() if isinstance(item, AuditEntry) else load_record(item)
