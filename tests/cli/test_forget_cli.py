"""``hivemem forget USER``: what it refuses before asking the fleet, against a real Redis."""

from __future__ import annotations

import redis

from hivemem.pool.redis_server import EmbeddedRedis
from tests.cli.conftest import Run


def test_a_timeout_must_be_a_finite_number_of_seconds(
    hivemem: Run, redis_server: EmbeddedRedis
) -> None:
    """--timeout of -1, 0, nan, inf, more than a day or no number exits 2 before the forget is
    queued (a negative one used to queue it, then exit 1; nan waited forever)."""
    for value in ("-1", "0", "nan", "inf", "-inf", "86401", "1e300", "soon"):
        done = hivemem("forget", "u1", "--timeout", value)
        assert done.code == 2, value
        assert "argument --timeout" in done.err, (value, done.err)
    client = redis.Redis.from_url(redis_server.url)
    try:
        assert client.keys("*celery*") == []  # nothing was sent to the workers
    finally:
        client.close()
