"""A memory's persist directory: one writer at a time, and a record of what wrote it.

Layout: ``<dir>/edge/`` (the index), ``<dir>/hivemem.json`` (schema version, embedding model and
dimension), ``<dir>/.lock`` (held with ``flock`` while a memory has the directory open).
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from typing import IO

from hivemem.pool.errors import StoreIncompatible, StoreLocked

SCHEMA_VERSION = 1


class StoreDirectory:
    """Holds the directory's lock until :meth:`release`."""

    def __init__(self, path: Path, *, model_id: str, dim: int) -> None:
        self.path = path
        #: The process that opened it: a process forked from it shares its lock and files.
        self._owner = os.getpid()
        path.mkdir(parents=True, exist_ok=True)
        self._lock_file: IO[str] | None = open(path / ".lock", "a+", encoding="utf-8")  # noqa: SIM115
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            self._lock_file = None
            raise StoreLocked(str(path)) from None
        try:
            self._check_meta(model_id, dim)
        except StoreIncompatible:
            self.release()
            raise

    @staticmethod
    def check_free(path: Path) -> None:
        """Raise StoreLocked when a memory has the directory ``path`` open; the lock is let go
        at once (for a caller that must know before it changes anything else)."""
        if not (path / ".lock").exists():
            return
        with open(path / ".lock", "a+", encoding="utf-8") as lock_file:
            try:
                fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise StoreLocked(str(path)) from None
            fcntl.flock(lock_file, fcntl.LOCK_UN)

    def _check_meta(self, model_id: str, dim: int) -> None:
        meta_path = self.path / "hivemem.json"
        expected = {"schema_version": SCHEMA_VERSION, "embedding_model": model_id, "dim": dim}
        if not meta_path.exists():
            staging = meta_path.with_suffix(".tmp")
            staging.write_text(json.dumps(expected), encoding="utf-8")
            os.replace(staging, meta_path)
            return
        found = json.loads(meta_path.read_text(encoding="utf-8"))
        if found != expected:
            raise StoreIncompatible(
                f"{self.path} was written with {found}, this memory uses {expected}"
            )

    @property
    def forked(self) -> bool:
        """Whether this process was forked from the one that opened the directory."""
        return os.getpid() != self._owner

    def check_owner(self) -> None:
        """Raises StoreLocked in a process forked from the one that opened the directory: it
        shares that process's lock and files, and what it wrote there could be lost (the
        other process's engine never sees it)."""
        if self.forked:
            raise StoreLocked(
                str(self.path),
                f"belongs to process {self._owner}: a forked process must open its own memory",
            )

    def release(self) -> None:
        """Unlock and close (in a forked process: close only, the lock is its parent's)."""
        if self._lock_file is not None:
            if not self.forked:
                fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            self._lock_file.close()
            self._lock_file = None
