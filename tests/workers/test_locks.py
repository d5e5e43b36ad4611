"""Worker locks on a real Redis: a TTL Redis cannot take is refused before Redis is touched; the
shortest allowed one holds and is renewed."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator

import pytest
import redis

from hivemem.pool.errors import InvalidInput
from hivemem.pool.redis_server import EmbeddedRedis
from hivemem.pool.settings import MAX_WORKER_S, MIN_LOCK_TTL_S
from hivemem.workers.locks import HeldLock, held

KEY = "t:lock:scope"


@pytest.fixture
def client(redis_server: EmbeddedRedis) -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(redis_server.url)
    yield connection
    connection.close()


@pytest.mark.parametrize(
    "ttl_s",
    [0.0004, 0.5, 0.0, -1.0, math.nan, math.inf, MAX_WORKER_S * 2, 1e300, True],
    ids=[
        "sub-ms",
        "half-second",
        "zero",
        "negative",
        "nan",
        "inf",
        "beyond-a-week",
        "huge",
        "bool",
    ],
)
def test_a_ttl_redis_cannot_take_is_refused_and_touches_nothing(
    client: redis.Redis, ttl_s: float
) -> None:
    """A TTL below 1 s (0.0004 s failed every lock with Redis's "invalid expire time"), not
    finite, or beyond a week raises InvalidInput naming lock_ttl_s; no key is set."""
    with pytest.raises(InvalidInput, match="lock TTL") as raised, held(client, KEY, ttl_s):
        pass
    assert raised.value.field == "lock_ttl_s"
    assert client.exists(KEY) == 0


def test_the_shortest_ttl_holds_the_lock_and_renews_it(client: redis.Redis) -> None:
    """A 1 s lock is taken, kept past its TTL by renewal, refused to a second holder, and
    released."""
    with held(client, KEY, MIN_LOCK_TTL_S) as lock:
        assert lock.acquired
        assert 0 < client.pttl(KEY) <= 1000
        time.sleep(MIN_LOCK_TTL_S * 1.5)
        assert client.exists(KEY) == 1
        assert not lock.lost.is_set()
        with held(client, KEY, MIN_LOCK_TTL_S) as other:
            assert not other.acquired
    assert client.exists(KEY) == 0


def test_a_waiter_takes_the_lock_once_its_holder_lets_it_go(client: redis.Redis) -> None:
    """With ``wait_s``, a second holder waits for the lock and takes it as soon as the first
    releases it; one that waits longer than ``wait_s`` gives up, the lock untouched."""
    first = HeldLock(client, KEY, MIN_LOCK_TTL_S)
    assert first.acquired
    started = time.monotonic()
    with held(client, KEY, MIN_LOCK_TTL_S, wait_s=0.2) as refused:
        assert not refused.acquired
    assert 0.15 <= time.monotonic() - started < 1.0  # a poll short of wait_s at most
    releaser = threading.Timer(0.3, first.release)
    releaser.start()
    started = time.monotonic()
    with held(client, KEY, MIN_LOCK_TTL_S, wait_s=5.0) as waiter:
        assert waiter.acquired
        assert 0.3 <= time.monotonic() - started < 1.0
    releaser.join()
    assert client.exists(KEY) == 0
