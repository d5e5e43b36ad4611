"""Redis connections: how the package opens them, and their failures as its own error.

``REDIS_DOWN`` are the redis-py exceptions that mean the server cannot be reached or did not
answer in time; :func:`redis_errors` turns them into PoolUnavailable for callers that do not
retry themselves. Such an error may also mean that the command ran and only its reply was lost:
:func:`ran_anyway` asks Redis.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import redis
import structlog

from hivemem.pool.errors import PoolUnavailable

REDIS_DOWN = (redis.ConnectionError, redis.TimeoutError)

log = structlog.get_logger(__name__)
T = TypeVar("T")


def redis_client(url: str, *, command_timeout_s: float) -> redis.Redis:
    """A client of ``url`` whose commands give up after ``command_timeout_s`` (the pool's
    ``command_timeout_s``), so that a stalled server or network holds no caller for longer:
    the pool's, each agent's and the workers' connections."""
    return redis.Redis.from_url(
        url,
        socket_connect_timeout=5,
        socket_timeout=command_timeout_s,
        health_check_interval=10,
    )


def unavailable(error: Exception) -> PoolUnavailable:
    """The PoolUnavailable that stands for ``error`` (its class named, nothing else)."""
    return PoolUnavailable(f"cannot reach Redis: {type(error).__name__}")


@contextmanager
def redis_errors() -> Iterator[None]:
    """Raise PoolUnavailable for a lost or timed-out connection inside the block."""
    try:
        yield
    except REDIS_DOWN as error:
        raise unavailable(error) from None


def read_back(found: Callable[[], T]) -> T | None:
    """``found()``, a read of Redis after a reply was lost; None when Redis cannot answer that
    either."""
    try:
        return found()
    except REDIS_DOWN:
        return None


def ran_anyway(error: Exception, found: Callable[[], T | None], event: str, **fields: object) -> T:
    """After a command whose reply was lost on the way (``error``: a timeout, a dropped
    connection): what ``found()`` reads in Redis when it shows that the command ran all the
    same (``event`` is logged, with ``fields``). Raises PoolUnavailable when it shows nothing
    (false, None) or Redis cannot say now: a request held up on its way may still run, and the
    note it leaves then tells a later call."""
    value = read_back(found)
    if not value:
        raise unavailable(error) from None
    log.warning(event, **fields)
    return value
