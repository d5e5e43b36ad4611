"""Access tracking: search hits and gets count as accesses, written in batches.

Accesses are bookkeeping, not acknowledged writes: they are buffered and written every
``flush_every`` accesses, on :meth:`flush`, and when the memory closes. Writing them promotes
records that reached the access threshold (see :mod:`hivemem.agents.tiers`).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable
from datetime import datetime

from hivemem.agents.tiers import TierManager
from hivemem.pool.ports import LocalIndex


class AccessTracker:
    """Buffers access counts; thread-safe."""

    def __init__(self, index: LocalIndex, tiers: TierManager, *, flush_every: int = 256) -> None:
        self._index = index
        self._tiers = tiers
        self._flush_every = flush_every
        self._pending: Counter[str] = Counter()
        self._last_seen: datetime | None = None
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()  # one read-modify-write of counts at a time

    def touch(self, ids: Iterable[str], now: datetime) -> None:
        """Count one access of each id; writes the buffer when it is full."""
        with self._lock:
            self._pending.update(ids)
            self._last_seen = now
            full = sum(self._pending.values()) >= self._flush_every
        if full:
            self.flush()

    def flush(self) -> None:
        """Write buffered accesses (and the promotions they earn) to the index."""
        with self._flush_lock:
            with self._lock:
                pending, self._pending = self._pending, Counter()
                seen = self._last_seen
            if pending and seen is not None:
                self._write(pending, seen)

    def _write(self, pending: Counter[str], seen: datetime) -> None:
        records = self._index.get(list(pending))
        updated = [
            r.model_copy(update={"access_count": r.access_count + pending[r.id]}) for r in records
        ]
        promoted = self._tiers.promotions(updated)
        self._index.update_fields(
            {
                r.id: {"access_count": r.access_count, "last_accessed_at": seen}
                | ({"tier": promoted[r.id]} if r.id in promoted else {})
                for r in updated
            }
        )
