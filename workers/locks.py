"""Locks that keep two workers off the same work: one per (zone, scope) for consolidation, one
per zone for ingest, and one per (zone, user) held while a batch of the user's stored records is
rewritten from what was read of it (see :func:`~hivemem.workers.consolidation.store_locked`).

A lock is a Redis key with a random token and a time to live (``ttl_s``). While it is held, a
thread renews it every third of its TTL, so a long task keeps it and a dead worker (SIGKILL, lost
machine) loses it at most ``ttl_s`` later. A holder that fails to renew (Redis unreachable for a
whole TTL) is told through :attr:`HeldLock.lost`; the work it protects is idempotent, so at worst
it is done twice, never lost.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import redis
import structlog
from redis.exceptions import LockError

from hivemem.pool.errors import InvalidInput
from hivemem.pool.settings import MAX_WORKER_S, MIN_LOCK_TTL_S

log = structlog.get_logger(__name__)
#: How often a waiter asks whether a lock is free (seconds).
_WAIT_POLL_S = 0.01


def check_ttl(ttl_s: object) -> float:
    """``ttl_s`` if it is a finite number of seconds from MIN_LOCK_TTL_S (1 s) to MAX_WORKER_S,
    else InvalidInput: Redis takes a TTL in whole milliseconds and refuses 0 and huge ones."""
    if (
        isinstance(ttl_s, bool)
        or not isinstance(ttl_s, int | float)
        or not MIN_LOCK_TTL_S <= ttl_s <= MAX_WORKER_S  # False for NaN
    ):
        raise InvalidInput(
            f"a lock TTL is {MIN_LOCK_TTL_S:g} to {MAX_WORKER_S:g} seconds: {repr(ttl_s)[:40]}",
            field="lock_ttl_s",
        )
    return float(ttl_s)


class HeldLock:
    """A lock this process holds (or tried to: :attr:`acquired`), waiting up to ``wait_s``
    seconds for another holder to let it go. Raises InvalidInput (Redis untouched) for a
    ``ttl_s`` :func:`check_ttl` refuses."""

    def __init__(self, client: redis.Redis, key: str, ttl_s: float, *, wait_s: float = 0.0) -> None:
        ttl_s = check_ttl(ttl_s)
        self.key = key
        self._lock = client.lock(
            key,
            timeout=ttl_s,
            blocking=wait_s > 0,
            blocking_timeout=wait_s if wait_s > 0 else None,
            sleep=_WAIT_POLL_S,
            thread_local=False,
        )
        self._ttl_s = ttl_s
        self._halt = threading.Event()
        self.lost = threading.Event()
        self.acquired = bool(self._lock.acquire())
        self._renewer: threading.Thread | None = None
        if self.acquired:
            self._renewer = threading.Thread(
                target=self._renew, name=f"hivemem-lock-{key}", daemon=True
            )
            self._renewer.start()

    def _renew(self) -> None:
        while not self._halt.wait(self._ttl_s / 3):
            try:
                self._lock.reacquire()
            except (LockError, redis.RedisError) as error:
                log.warning("lock_renewal_failed", key=self.key, error=type(error).__name__)
                self.lost.set()
                return

    def release(self) -> None:
        self._halt.set()
        if self._renewer is not None:
            self._renewer.join()
        if self.acquired and not self.lost.is_set():
            try:
                self._lock.release()
            except (LockError, redis.RedisError) as error:
                log.warning("lock_release_failed", key=self.key, error=type(error).__name__)


@contextmanager
def held(client: redis.Redis, key: str, ttl_s: float, *, wait_s: float = 0.0) -> Iterator[HeldLock]:
    """Try to take the lock ``key``, waiting up to ``wait_s`` seconds (by default not at all);
    check :attr:`HeldLock.acquired`."""
    lock = HeldLock(client, key, ttl_s, wait_s=wait_s)
    try:
        yield lock
    finally:
        lock.release()
