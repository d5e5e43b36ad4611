"""Redis connections: how the package opens them, and their failures as its own error.

``REDIS_DOWN`` are the redis-py exceptions that mean the server cannot be reached or did not
answer in time; :func:`redis_errors` turns them into PoolUnavailable for callers that do not
retry themselves.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import redis

from hivemem.pool.errors import PoolUnavailable

REDIS_DOWN = (redis.ConnectionError, redis.TimeoutError)


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
