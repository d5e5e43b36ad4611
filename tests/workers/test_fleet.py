"""``Fleet``, the workers' client, on a real Redis with no worker running: a wait that runs out
leaves the task queued; a timeout that is not a finite number of seconds above 0 is refused
before anything is queued."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import pytest
import redis

from hivemem.pool.enums import Zone
from hivemem.pool.errors import InvalidInput, PoolUnavailable
from hivemem.pool.redis_server import EmbeddedRedis
from hivemem.pool.settings import HivememSettings
from hivemem.workers.fleet import MAX_WAIT_S, Fleet


@pytest.fixture
def fleet(worker_settings: Callable[..., HivememSettings]) -> Iterator[Fleet]:
    with Fleet(worker_settings()) as client:
        yield client


def queued(redis_server: EmbeddedRedis) -> int:
    """Messages waiting in the fleet's broker queues."""
    client = redis.Redis.from_url(redis_server.url)
    try:
        return sum(client.llen(f"hivemem:celery:{queue}") for queue in ("consolidate", "lifecycle"))
    finally:
        client.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "timeout_s",
    [math.nan, math.inf, -math.inf, -1.0, 0.0, MAX_WAIT_S * 2, True, "5"],
    ids=["nan", "inf", "-inf", "negative", "zero", "beyond-a-day", "bool", "str"],
)
def test_a_bad_timeout_is_refused_before_anything_is_queued(
    fleet: Fleet, redis_server: EmbeddedRedis, timeout_s: object
) -> None:
    """NaN or infinity (which waited forever), 0 or less (which gave up at once while the task
    ran later), beyond a day, or not a number: InvalidInput naming timeout_s, nothing queued."""
    calls: list[Callable[[], object]] = [
        lambda: fleet.forget_user("u1", timeout_s=timeout_s),  # type: ignore[arg-type]
        lambda: fleet.reseal(Zone.PUBLIC, timeout_s=timeout_s),  # type: ignore[arg-type]
        lambda: fleet.consolidate(Zone.PUBLIC, "u1", timeout_s=timeout_s),  # type: ignore[arg-type]
    ]
    for call in calls:
        with pytest.raises(InvalidInput, match="timeout_s") as raised:
            call()
        assert raised.value.field == "timeout_s"
    assert queued(redis_server) == 0


def test_a_wait_that_runs_out_leaves_the_task_queued(
    fleet: Fleet, redis_server: EmbeddedRedis
) -> None:
    """With no worker, a finite timeout raises PoolUnavailable after it and the task stays
    queued for a worker to run later; the client stops listening for the answer at once (a
    result left listening failed, unraisably, once Redis was gone)."""
    with pytest.raises(PoolUnavailable, match="stays queued"):
        fleet.consolidate(Zone.PUBLIC, "u1", timeout_s=0.2)
    assert queued(redis_server) == 1
