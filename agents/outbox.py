"""The agent's durable outbox and receive cursors, in SQLite under its persist directory.

A write is acknowledged to the caller only after its sync messages are committed here, so it
survives Redis being down and the process being killed; a message leaves the outbox only after
Redis acknowledged it (the sender deletes it then). A crash between the two resends the message,
which the bus deduplicates by message id.

SQLite runs in WAL mode with ``synchronous=NORMAL``: a commit survives the process being killed
(the operating system holds it); a power cut may lose the last commits. ``durable=True``
(``synchronous=FULL``) syncs every commit to disk, at about a millisecond more per write here.

The cursor table holds, per topic, the epoch and sequence number up to which this agent applied,
and a digest of the message at that number (a Redis restored from older data may number other
messages the same: the receiver compares the stream's entry there with it).

The intent table is the memory's write-ahead record (a
:class:`~hivemem.pool.ports.WriteJournal`): each write the pool must hear of is noted there
before the local index changes and crossed off once its messages are in the outbox, so that a
process killed in between leaves what the next one needs to finish it (see
:mod:`hivemem.agents.write_ahead`). It holds record ids only, never content.

The handed table notes which agents each record was handed over to (a hand-over's copy arrives
whatever the levels either agent shares or receives): its new versions and its tombstone go to
their inboxes too, so that the copy does not stay current or alive there.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal

from hivemem.pool.ports import Intent

FILE_NAME = "outbox.sqlite3"
#: Ids per SQLite query (its limit of bound parameters is 999 in older builds).
_IDS_PER_QUERY = 500


@dataclass(frozen=True, slots=True)
class Pending:
    """A message waiting in the outbox."""

    row: int
    topic: str
    message_id: str
    body: bytes


class Outbox:
    """Thread-safe; one per agent directory (the directory's lock guards against two)."""

    def __init__(self, directory: Path, *, durable: bool = False) -> None:
        self._lock = threading.Lock()
        self._db = sqlite3.connect(
            directory / FILE_NAME, check_same_thread=False, isolation_level=None
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS outbox (row INTEGER PRIMARY KEY AUTOINCREMENT,"
            " topic TEXT NOT NULL, message_id TEXT NOT NULL, body BLOB NOT NULL)"
        )
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS cursors (topic TEXT PRIMARY KEY, epoch TEXT NOT NULL,"
            " seq INTEGER NOT NULL, digest BLOB)"
        )
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(cursors)")}
        if "digest" not in columns:  # an outbox made before the digests
            self._db.execute("ALTER TABLE cursors ADD COLUMN digest BLOB")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS intents (entry INTEGER PRIMARY KEY AUTOINCREMENT,"
            " kind TEXT NOT NULL, ids TEXT NOT NULL, deleted_at TEXT)"
        )
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS handed (record_id TEXT NOT NULL, agent TEXT NOT NULL,"
            " PRIMARY KEY (record_id, agent))"
        )

    def put(
        self,
        messages: Sequence[tuple[str, str, bytes]],
        *,
        handed: Sequence[tuple[str, str]] = (),
    ) -> None:
        """Commit ``(topic, message_id, body)`` messages, all or none, and with them the
        ``(record id, agent)`` hand-overs they make (see :meth:`handed_to`)."""
        if not messages:
            return
        with self._lock:
            self._db.execute("BEGIN")
            try:
                self._db.executemany(
                    "INSERT INTO outbox (topic, message_id, body) VALUES (?, ?, ?)", messages
                )
                self._db.executemany(
                    "INSERT OR IGNORE INTO handed (record_id, agent) VALUES (?, ?)", handed
                )
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def forget_handed(self, record_ids: Sequence[str]) -> None:
        """Drop the hand-over notes of ``record_ids`` (deleted: nothing more follows them)."""
        with self._lock:
            self._db.executemany(
                "DELETE FROM handed WHERE record_id = ?", [(i,) for i in record_ids]
            )

    def handed_to(self, record_ids: Sequence[str]) -> dict[str, list[str]]:
        """The agents each of ``record_ids`` was handed over to (only those handed over)."""
        found: dict[str, list[str]] = {}
        with self._lock:
            for start in range(0, len(record_ids), _IDS_PER_QUERY):
                chunk = list(record_ids[start : start + _IDS_PER_QUERY])
                marks = ",".join("?" * len(chunk))
                rows = self._db.execute(
                    f"SELECT record_id, agent FROM handed WHERE record_id IN ({marks})",  # noqa: S608 - placeholders only
                    chunk,
                )
                for record_id, agent in rows:
                    found.setdefault(record_id, []).append(agent)
        return found

    def peek(self, limit: int, max_bytes: int | None = None) -> list[Pending]:
        """The oldest ``limit`` messages, oldest first; with ``max_bytes``, the longest run of
        them whose bodies hold at most that many bytes, but at least the first (rows are read
        one by one: the bodies past the limit are not loaded)."""
        found: list[Pending] = []
        total = 0
        with self._lock:
            rows = self._db.execute(
                "SELECT row, topic, message_id, body FROM outbox ORDER BY row LIMIT ?", (limit,)
            )
            for row, topic, message_id, body in rows:
                total += len(body)
                if max_bytes is not None and total > max_bytes and found:
                    break
                found.append(Pending(row, topic, message_id, bytes(body)))
        return found

    def remove(self, rows: Sequence[int]) -> None:
        if not rows:
            return
        with self._lock:
            self._db.executemany("DELETE FROM outbox WHERE row = ?", [(r,) for r in rows])

    def __len__(self) -> int:
        with self._lock:
            (count,) = self._db.execute("SELECT count(*) FROM outbox").fetchone()
        return int(count)

    def cursor(self, topic: str) -> tuple[str | None, int, bytes | None]:
        """``(epoch, seq, digest)`` applied so far on ``topic`` (``digest``: of the message at
        ``seq``, None when not kept); ``(None, 0, None)`` before the first."""
        with self._lock:
            row = self._db.execute(
                "SELECT epoch, seq, digest FROM cursors WHERE topic = ?", (topic,)
            ).fetchone()
        if row is None:
            return None, 0, None
        return row[0], int(row[1]), None if row[2] is None else bytes(row[2])

    def set_cursor(self, topic: str, epoch: str, seq: int, digest: bytes | None = None) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO cursors (topic, epoch, seq, digest) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (topic) DO UPDATE SET epoch = excluded.epoch, seq = excluded.seq,"
                " digest = excluded.digest",
                (topic, epoch, seq, digest),
            )

    # -- the write-ahead record (a WriteJournal) -----------------------------------------------

    def note(
        self,
        kind: Literal["records", "tombstones"],
        ids: Sequence[str],
        deleted_at: datetime | None = None,
    ) -> int:
        """Note an intent (committed when this returns); its entry."""
        when = None if deleted_at is None else deleted_at.isoformat()
        with self._lock:
            cursor = self._db.execute(
                "INSERT INTO intents (kind, ids, deleted_at) VALUES (?, ?, ?)",
                (kind, json.dumps(list(ids)), when),
            )
        return int(cursor.lastrowid or 0)

    def cross_off(self, entry: int) -> None:
        with self._lock:
            self._db.execute("DELETE FROM intents WHERE entry = ?", (entry,))

    def unfinished(self) -> list[Intent]:
        """The intents not crossed off, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT entry, kind, ids, deleted_at FROM intents ORDER BY entry"
            ).fetchall()
        return [
            Intent(
                entry=int(entry),
                kind="tombstones" if kind == "tombstones" else "records",
                ids=tuple(json.loads(ids)),
                deleted_at=None if when is None else datetime.fromisoformat(when),
            )
            for entry, kind, ids, when in rows
        ]

    def close(self) -> None:
        with self._lock:
            self._db.close()
