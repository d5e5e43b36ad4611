"""Access tracking: search hits and gets count as accesses, written in the background.

Accesses are bookkeeping, not acknowledged writes: they are buffered and written by a daemon
thread every ``interval_s`` or once ``max_pending`` distinct records wait (so no search pays
for them), on :meth:`flush`, and on :meth:`close`. A crash loses at most the buffered counts.
Writing them promotes records that reached the access threshold (see :mod:`hivemem.agents.tiers`).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable
from datetime import datetime

import structlog

from hivemem.agents.tiers import TierManager
from hivemem.pool.failures import described
from hivemem.pool.ports import LocalIndex

log = structlog.get_logger(__name__)
_CHUNK = 128


class AccessTracker:
    """Buffers access counts; thread-safe."""

    def __init__(
        self,
        index: LocalIndex,
        tiers: TierManager,
        writes: threading.RLock,
        *,
        interval_s: float = 30.0,
        max_pending: int = 20_000,
    ) -> None:
        """``writes``: the lock the memory's writes hold, taken for each chunk so that no
        delete or re-seal runs between reading a chunk's counts and writing them (a delete
        would make the write fail, a re-seal would overwrite it)."""
        self._index = index
        self._tiers = tiers
        self._writes = writes
        self._interval_s = interval_s
        self._max_pending = max_pending
        self._wake = threading.Event()
        self._pending: Counter[str] = Counter()
        #: When each pending id was last accessed.
        self._seen: dict[str, datetime] = {}
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()  # one read-modify-write of counts at a time
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def touch(self, ids: Iterable[str], now: datetime) -> None:
        """Count one access of each id (written within ``interval_s``)."""
        with self._lock:
            ids = list(ids)
            self._pending.update(ids)
            self._seen.update(dict.fromkeys(ids, now))
            if len(self._pending) >= self._max_pending:
                self._wake.set()
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="hivemem-access-flush", daemon=True
                )
                self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._interval_s)
            self._wake.clear()
            try:
                self.flush()
            except Exception as error:  # noqa: BLE001 - isolation point: the flusher goes on
                log.error("access_flush_failed", **described(error))

    def flush(self) -> None:
        """Write buffered accesses (and the promotions they earn) to the index."""
        with self._flush_lock:
            with self._lock:
                pending, self._pending = self._pending, Counter()
                seen, self._seen = self._seen, {}
            if pending:
                self._write(pending, seen)

    def close(self) -> None:
        """Stop the background writer and write what is buffered."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
        self.flush()

    def _write(self, pending: Counter[str], seen: dict[str, datetime]) -> None:
        """In chunks, reading only the counts and tiers: each chunk holds the index (and the
        memory's writes) briefly, so searches and writes running meanwhile are not held up."""
        ids = list(pending)
        for start in range(0, len(ids), _CHUNK):
            with self._writes:
                promoted = self._write_chunk(ids[start : start + _CHUNK], pending, seen)
            if promoted:
                self._tiers.invalidate()

    def _write_chunk(
        self, ids: list[str], pending: Counter[str], seen: dict[str, datetime]
    ) -> bool:
        """Add the chunk's counts to those of its records still live; whether any was
        promoted."""
        facts = self._index.retention_facts_of(ids)
        counts = {f.id: f.access_count + pending[f.id] for f in facts}
        promoted = self._tiers.promotions((f.id, f.tier, counts[f.id]) for f in facts)
        self._index.update_fields(
            {
                f.id: {"access_count": counts[f.id], "last_accessed_at": seen[f.id]}
                | ({"tier": promoted[f.id]} if f.id in promoted else {})
                for f in facts
            }
        )
        return bool(promoted)
