"""Worker locks on a real Redis: a TTL Redis cannot take is refused before Redis is touched; the
shortest allowed one holds and is renewed."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator

import pytest
import redis

from hivemem.pool.errors import InvalidInput
from hivemem.pool.redis_server import EmbeddedRedis
from hivemem.pool.settings import MAX_WORKER_S, MIN_LOCK_TTL_S
from hivemem.workers.locks import held

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
