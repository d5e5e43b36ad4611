"""The audit log on Redis: append-only and hash-chained, mirrored to a JSONL file.

Keys under the namespace ``ns``: ``ns:audit``, a stream (entry id ``<seq>-0``, one field ``e``
holding the entry's canonical JSON; never trimmed) and ``ns:audit:head``, a hash (``seq``,
``hash`` of the last entry). Redis Lua has no SHA-256, so the writer hashes the entry here and
one script appends it only if the head is still the one the entry links to (compare-and-set);
otherwise the writer re-links its entry to the new head and tries again. Writers in any number
of processes thus keep one chain with contiguous seqs.

``details`` hold plain facts (ids, counts, reasons, key ids), never memory content, secrets or
key material: whoever administers Redis, or reads the JSONL file, reads them. Callers are
responsible for that; the log only checks that they are small, plain JSON data.

The JSONL sink writes each entry this process appends as one line (the same canonical JSON),
through a structlog logger of its own (the global structlog configuration does not touch it).
Writers sharing the file hold an exclusive ``flock`` on it from the append to the write, so the
file is in seq order and :func:`verify_file` accepts it. It is a complete copy of the log only
if every writer of the log writes to it; Redis is the authority (an entry appended just before a
crash may be missing from the file, and so may one the file could not take: that is logged).
"""

from __future__ import annotations

import fcntl
import random
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import redis
import structlog

from hivemem.pool.adapters.redis_errors import REDIS_DOWN, redis_errors
from hivemem.pool.errors import (
    AuditConflict,
    AuditLogCorrupt,
    InvalidIdentifier,
    InvalidInput,
)
from hivemem.pool.failures import described
from hivemem.security.audit_chain import VerifyReport, verify
from hivemem.security.audit_entry import (
    GENESIS,
    Anchor,
    AuditEntry,
    AuditEvent,
    canonical_json,
    check_anchor,
)

log = structlog.get_logger(__name__)

_APPEND = (Path(__file__).parent / "lua" / "audit_append.lua").read_text()
#: The pattern of ``PoolSettings.namespace``, checked again here: the namespace builds keys.
_NAMESPACE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_MAX_ATTEMPTS = 100
#: What XRANGE returns: (entry id, fields) pairs (bytes, or str with ``decode_responses``).
_Entries = list[tuple[bytes | str, dict[Any, Any]]]
_PAGE = 512


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _field(fields: dict[Any, Any]) -> bytes | str:
    """A stream entry's ``e`` field (bytes keys, or str with ``decode_responses``)."""
    value: bytes | str = fields.get(b"e", fields.get("e", b""))
    return value


class _JsonlSink:
    """Entries as lines of a JSONL file, in seq order among the writers that share it."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = path.open("a", encoding="ascii")
        self._log: structlog.BoundLogger = structlog.wrap_logger(
            structlog.WriteLogger(self._file),  # writes one line and flushes, under a lock
            processors=[structlog.processors.JSONRenderer(serializer=_render)],
            wrapper_class=structlog.BoundLogger,
            context_class=dict,
            cache_logger_on_first_use=True,
        )

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the file's exclusive lock (against every other open of it, this process's too)."""
        fcntl.flock(self._file.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)

    def write(self, entry: AuditEntry) -> None:
        """Write ``entry``'s line. A file that cannot take it (disk full, say) is logged, not
        raised: the entry is in Redis, the authority, and a caller retrying the record would
        append it there twice. The file then lacks that seq, which verify_file reports."""
        try:
            self._log.msg(**entry.record())
        except OSError as error:
            log.error(
                "audit_file_write_failed", path=self._file.name, seq=entry.seq, **described(error)
            )

    def close(self) -> None:
        try:
            self._file.close()
        except OSError as error:  # what a failed write left in the buffer
            log.error("audit_file_write_failed", path=self._file.name, **described(error))


def _render(event_dict: Any, **_: Any) -> str:
    """structlog's JSON serializer here: the entry's canonical JSON, so line and stream agree."""
    return canonical_json(event_dict)


def check_namespace(namespace: object) -> str:
    """Return ``namespace`` if it may prefix Redis keys, or raise InvalidIdentifier."""
    if not isinstance(namespace, str) or not _NAMESPACE.fullmatch(namespace):
        shown = namespace[:80] if isinstance(namespace, str) else type(namespace).__name__
        raise InvalidIdentifier(
            f"namespace must match {_NAMESPACE.pattern}: {shown!r}", field="namespace"
        )
    return namespace


class AuditLog:
    """The audit log of one pool namespace. Thread-safe; use one per process (or several: they
    share the chain through Redis). Redis errors raise PoolUnavailable."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        namespace: str,
        jsonl_path: Path | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        namespace = check_namespace(namespace)
        self.client = client
        self.stream_key = f"{namespace}:audit"
        self.head_key = f"{namespace}:audit:head"
        self._append = client.register_script(_APPEND)
        self._clock = clock or (lambda: datetime.now(UTC))
        self._sink = _JsonlSink(jsonl_path) if jsonl_path is not None else None
        self._lock = threading.Lock()
        self._head = Anchor(0, GENESIS)  # the last head seen here; a stale one costs a retry
        #: An entry whose append raised with its outcome unknown (see _caught_up).
        self._unsure: AuditEntry | None = None

    def record(
        self,
        kind: AuditEvent | str,
        *,
        actor: str,
        subject: str,
        zone: str | None = None,
        **details: object,
    ) -> AuditEntry:
        """Append one entry (``ts``: now, UTC) and return it. ``details`` are plain facts, never
        content. Raises InvalidInput (nothing appended) for an unknown kind, an empty or overlong
        actor, subject or zone, or details that are not small plain JSON data; AuditConflict
        after 100 lost races; AuditLogCorrupt when the stream cannot take the next seq."""
        ts = self._clock()
        sink_lock = self._sink.locked() if self._sink is not None else nullcontext()
        with self._lock, sink_lock, redis_errors():
            head = self._head
            for attempt in range(_MAX_ATTEMPTS):
                entry = AuditEntry.create(
                    head, kind, ts=ts, actor=actor, subject=subject, zone=zone, details=details
                )
                try:
                    moved = self._try_append(head, entry)
                except REDIS_DOWN:
                    # The reply was lost (a timeout, a dropped connection) and the script may
                    # have run, or may run still (a request held up on its way): Redis says.
                    if not self._landed(entry):
                        self._unsure = entry  # it may land still: see _caught_up
                        raise
                    moved = None
                if moved is None:
                    self._head = entry.anchor
                    if self._sink is not None:
                        self._sink.write(entry)
                    return entry
                self._caught_up(moved)
                head = moved
                if attempt >= 2:  # contention: spread the writers out a little
                    time.sleep(random.uniform(0, 0.001 * attempt))  # noqa: S311 - jitter
        raise AuditConflict(_MAX_ATTEMPTS)

    def _landed(self, entry: AuditEntry) -> bool:
        """Whether the stream holds ``entry`` (at its seq, with its hash); False when Redis
        cannot tell now."""
        try:
            found = cast(
                "_Entries",
                self.client.xrange(self.stream_key, f"{entry.seq}-0", f"{entry.seq}-0"),
            )
        except REDIS_DOWN:
            return False
        return bool(found) and _parse(_field(found[0][1])).hash == entry.hash

    def _caught_up(self, moved: Anchor) -> None:
        """A head ``moved`` on: when it is the entry this process was unsure of, that entry
        landed after all; its line goes to the file, in its place."""
        unsure, self._unsure = self._unsure, None
        if unsure is None:
            return
        if moved == unsure.anchor:
            if self._sink is not None:
                self._sink.write(unsure)
            log.warning("audit_append_landed_late", seq=unsure.seq)
        elif moved.seq < unsure.seq:
            self._unsure = unsure  # not there yet: perhaps still

    def _try_append(self, head: Anchor, entry: AuditEntry) -> Anchor | None:
        """Append ``entry`` after ``head``: None when done, else the head that moved on."""
        try:
            reply = self._append(
                keys=[self.stream_key, self.head_key],
                args=[head.seq, head.hash, entry.seq, entry.to_json(), entry.hash],
            )
        except redis.ResponseError as error:
            raise AuditLogCorrupt(
                f"the audit stream cannot take seq {entry.seq}: {error}"
            ) from None
        if int(reply[0]) == 1:
            return None
        return Anchor(int(reply[1]), _text(reply[2]) or GENESIS)

    def head(self) -> Anchor:
        """The last entry's (seq, hash), ``(0, GENESIS)`` for an empty log: record it somewhere
        this log's writers cannot reach, and pass it to :meth:`verify` later."""
        with redis_errors():
            seq, hash_ = cast(
                "list[bytes | str | None]", self.client.hmget(self.head_key, ["seq", "hash"])
            )
        if seq is None:
            return Anchor(0, GENESIS)
        try:
            return check_anchor((int(seq), _text(hash_ or b"")))
        except ValueError:  # InvalidInput too
            raise AuditLogCorrupt(f"the audit head {self.head_key} is malformed") from None

    def _raw(self, start_seq: int) -> Iterator[bytes | str]:
        """Stored entries (JSON text) from ``start_seq`` on, in stream order, page by page."""
        low = f"{start_seq}-0"
        while True:
            with redis_errors():
                page = cast(
                    "_Entries", self.client.xrange(self.stream_key, min=low, max="+", count=_PAGE)
                )
            for _entry_id, fields in page:
                yield _field(fields)
            if len(page) < _PAGE:
                return
            ms, _, sub = _text(page[-1][0]).partition("-")
            low = f"{ms}-{int(sub) + 1}"

    def entries(self, start_seq: int = 1) -> Iterator[AuditEntry]:
        """Entries with seq >= ``start_seq``, oldest first (hashes not checked: see
        :meth:`verify`). Raises AuditLogCorrupt on an entry that is not well-formed."""
        if start_seq < 1:
            raise InvalidInput("start_seq must be at least 1", field="start_seq")
        for raw in self._raw(start_seq):
            yield _parse(raw)

    def tail(self, n: int) -> list[AuditEntry]:
        """The last ``n`` entries, oldest first. Raises AuditLogCorrupt like :meth:`entries`."""
        if n < 0:
            raise InvalidInput("n must not be negative", field="n")
        if n == 0:
            return []
        with redis_errors():
            page = cast(
                "_Entries", self.client.xrevrange(self.stream_key, max="+", min="-", count=n)
            )
        return [_parse(_field(fields)) for _id, fields in reversed(page)]

    def verify(self, anchor: Anchor | tuple[int, str] | None = None) -> VerifyReport:
        """Verify the whole stream: the chain, the head key (a cut tail shows as TRUNCATED) and
        ``anchor``, a head recorded earlier (a rewrite up to it shows as REWRITTEN)."""
        anchors = [self.head()] if anchor is None else [self.head(), check_anchor(anchor)]
        return verify(self._raw(1), anchors=anchors)

    def close(self) -> None:
        """Close the JSONL file (the Redis client is the caller's)."""
        if self._sink is not None:
            self._sink.close()

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _parse(raw: bytes | str) -> AuditEntry:
    try:
        return AuditEntry.from_json(raw)
    except InvalidInput:
        raise AuditLogCorrupt(
            "the audit stream holds a malformed entry; verify() says where"
        ) from None


def verify_file(path: Path, *, anchor: Anchor | tuple[int, str] | None = None) -> VerifyReport:
    """Verify a JSONL copy of the log (one entry per line, from seq 1) against the chain and
    ``anchor``; a problem's position is its line number minus one. Raises InvalidInput for a
    malformed anchor or a file that cannot be read (missing, a directory, no permission, an I/O
    error while reading): nothing is said about the log then."""
    anchors = [] if anchor is None else [check_anchor(anchor)]
    try:
        with path.open("rb") as file:
            return verify((line.removesuffix(b"\n") for line in file), anchors=anchors)
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise InvalidInput(f"cannot read the audit file {path}: {reason}", field="file") from None
