"""The zone store on Qdrant Edge: the embedded default (no Qdrant server), and the tests' store.

Layout under ``root``: per zone, ``<namespace>_<zone>/`` (the live collection, an
:class:`~hivemem.pool.adapters.edge_index.EdgeIndex`) and ``<namespace>_<zone>_archive/`` (an
:class:`~hivemem.pool.adapters.edge_archive.EdgeArchive`), plus ``.lock``.

An Edge shard belongs to one process at a time, while Celery runs several worker processes. The
store therefore takes ``.lock`` (``flock``) when it first opens a shard and keeps the shards
open while it is in use; after ``idle_close_s`` without a call (and outside :meth:`session`) a
background thread closes them and releases the lock. A process waiting for the lock says so in
``.wanted``; the holder then releases the lock as soon as its current session ends, so worker
processes take turns task by task. A waiter gives up after ``open_timeout_s`` with
:class:`StoreBusy`. The
kernel releases the lock of a process that dies, so a SIGKILLed worker never wedges the store.
With one worker process (the embedded default) the shards simply stay open.
"""

from __future__ import annotations

import fcntl
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import structlog

from hivemem.pool.adapters.edge_archive import EdgeArchive
from hivemem.pool.adapters.edge_index import EdgeIndex
from hivemem.pool.enums import Zone, checked_zone
from hivemem.pool.errors import MemoryClosed, StoreBusy
from hivemem.pool.filters import And
from hivemem.pool.ports import Vector, tombstones_in
from hivemem.pool.records import MemoryRecord, Tombstone

log = structlog.get_logger(__name__)
_LOCK_POLL_S = 0.05


class EdgeZoneStore:
    """:class:`hivemem.pool.ports.ZoneStore` on Qdrant Edge shards under ``root``."""

    def __init__(
        self,
        root: Path,
        *,
        dim: int,
        namespace: str = "hivemem",
        idle_close_s: float = 2.0,
        open_timeout_s: float = 120.0,
    ) -> None:
        self.root = root
        self.dim = dim
        self.namespace = namespace
        self._idle_close_s = idle_close_s
        self._open_timeout_s = open_timeout_s
        self._lock = threading.RLock()
        self._live: dict[Zone, EdgeIndex] = {}
        self._archive: dict[Zone, EdgeArchive] = {}
        self._lock_file: IO[bytes] | None = None
        self._sessions = 0
        self._last_use = time.monotonic()
        self._closed = False
        self._closer: threading.Thread | None = None
        self._halt = threading.Event()
        self._wanted = root / ".wanted"
        root.mkdir(parents=True, exist_ok=True)

    # -- opening and closing --------------------------------------------------------------------

    def collection(self, zone: Zone, *, archive: bool = False) -> str:
        """The collection's name: ``<namespace>_<zone>`` (``_archive`` appended for archives)."""
        suffix = "_archive" if archive else ""
        return f"{self.namespace}_{checked_zone(zone).value}{suffix}"

    @contextmanager
    def session(self) -> Iterator[None]:
        """A unit of work (one task): the shards stay open in this process until it ends."""
        with self._lock:
            self._sessions += 1
        try:
            yield
        finally:
            with self._lock:
                self._sessions -= 1
                if self._sessions == 0 and self._lock_file is not None and self._wanted.exists():
                    self._release()

    def _acquire(self) -> None:
        """Take the store's lock (waiting for another process to release it)."""
        if self._lock_file is not None:
            return
        handle = (self.root / ".lock").open("ab")
        deadline = time.monotonic() + self._open_timeout_s
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    handle.close()
                    raise StoreBusy(
                        f"the zone store under {self.root} stayed open in another process for "
                        f"{self._open_timeout_s:.0f} s"
                    ) from None
                self._wanted.touch()
                time.sleep(_LOCK_POLL_S)
        self._wanted.unlink(missing_ok=True)
        self._lock_file = handle
        if self._closer is None and self._idle_close_s > 0:
            self._closer = threading.Thread(
                target=self._close_when_idle, name="hivemem-zone-store-closer", daemon=True
            )
            self._closer.start()

    def _used(self) -> None:
        if self._closed:
            raise MemoryClosed("the zone store is closed")
        self._acquire()
        self._last_use = time.monotonic()

    def _index(self, zone: Zone) -> EdgeIndex:
        with self._lock:
            self._used()
            zone = checked_zone(zone)
            if zone not in self._live:
                self._live[zone] = EdgeIndex(self.root / self.collection(zone), dim=self.dim)
            return self._live[zone]

    def _archived(self, zone: Zone) -> EdgeArchive:
        with self._lock:
            self._used()
            zone = checked_zone(zone)
            if zone not in self._archive:
                path = self.root / self.collection(zone, archive=True)
                self._archive[zone] = EdgeArchive(path)
            return self._archive[zone]

    def _release(self) -> None:
        """Close every shard and give the lock up (the caller holds ``self._lock``)."""
        for index in self._live.values():
            index.close()
        for archive in self._archive.values():
            archive.close()
        self._live.clear()
        self._archive.clear()
        if self._lock_file is not None:
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            self._lock_file.close()
            self._lock_file = None

    def _close_when_idle(self) -> None:
        while not self._halt.wait(min(0.5, self._idle_close_s)):
            with self._lock:
                idle_s = time.monotonic() - self._last_use
                if (
                    self._lock_file is not None
                    and self._sessions == 0
                    and (idle_s >= self._idle_close_s)
                ):
                    self._release()
                    log.debug("zone_store_released", root=str(self.root))

    def close(self) -> None:
        self._halt.set()
        with self._lock:
            self._release()
            self._closed = True

    # -- the live collections -------------------------------------------------------------------

    def upsert(
        self, zone: Zone, records: Sequence[MemoryRecord], dense: Vector | None = None
    ) -> None:
        if records:
            with self._lock:
                self._index(zone).upsert(records, dense)

    def put_tombstones(self, zone: Zone, tombstones: Sequence[Tombstone]) -> None:
        if not tombstones:
            return
        with self._lock:
            self._index(zone).put_tombstones(tombstones)
            self._archived(zone).remove([t.id for t in tombstones])

    def presence(self, zone: Zone, ids: Sequence[str]) -> dict[str, bool]:
        with self._lock:
            return self._index(zone).presence(ids)

    def get(
        self, zone: Zone, ids: Sequence[str], *, with_vectors: bool = False
    ) -> list[MemoryRecord]:
        with self._lock:
            return self._index(zone).get(ids, with_vectors=with_vectors)

    def scan(self, zone: Zone, where: And, *, with_vectors: bool = False) -> Iterator[MemoryRecord]:
        with self._lock:
            return iter(list(self._index(zone).scan(where, with_vectors=with_vectors)))

    def ids(self, zone: Zone, where: And) -> list[str]:
        with self._lock:
            return self._index(zone).ids(where)

    def count(self, zone: Zone, where: And) -> int:
        with self._lock:
            return self._index(zone).count(where)

    def facet(self, zone: Zone, field: str, where: And) -> dict[str, int]:
        with self._lock:
            return self._index(zone).facet(field, where)

    def update_fields(self, zone: Zone, updates: Mapping[str, Mapping[str, object]]) -> None:
        if updates:
            with self._lock:
                self._index(zone).update_fields(updates)

    def replace_content(
        self, zone: Zone, pairs: Sequence[tuple[MemoryRecord, MemoryRecord]]
    ) -> list[str]:
        if not pairs:
            return []
        with self._lock:
            return self._index(zone).replace_content(pairs)

    def remove(self, zone: Zone, ids: Sequence[str]) -> None:
        if ids:
            with self._lock:
                self._index(zone).remove(ids)

    # -- the archive collections ----------------------------------------------------------------

    def archive_put(self, zone: Zone, records: Sequence[MemoryRecord]) -> None:
        if records:
            with self._lock:
                self._archived(zone).put(records)

    def archive_replace(
        self, zone: Zone, pairs: Sequence[tuple[MemoryRecord, MemoryRecord]]
    ) -> list[str]:
        if not pairs:
            return []
        with self._lock:
            return self._archived(zone).replace(pairs)

    def archive_get(self, zone: Zone, ids: Sequence[str]) -> list[MemoryRecord]:
        with self._lock:
            return self._archived(zone).get(ids)

    def archive_ids(self, zone: Zone, where: And) -> list[str]:
        with self._lock:
            return self._archived(zone).ids(where)

    def archive_facet(self, zone: Zone, field: str, where: And) -> dict[str, int]:
        with self._lock:
            return self._archived(zone).facet(field, where)

    def tombstones(self, zone: Zone, where: And) -> list[Tombstone]:
        return tombstones_in(self, zone, where)

    def archive_remove(self, zone: Zone, ids: Sequence[str]) -> None:
        if ids:
            with self._lock:
                self._archived(zone).remove(ids)
