"""The Celery app of the worker fleet: its configuration (reliability settings, queues, routes,
beat schedule), the `hivemem worker`/`hivemem beat` commands, and its tasks run by a real worker
(solo pool, in a thread of the test) on a real Redis and the embedded zone store."""

from __future__ import annotations

import gc
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pytest
from celery import Celery
from celery.contrib.testing.worker import start_worker
from kombu.entity import Queue

from hivemem.agents.embedding import MINILM_DIM
from hivemem.pool.enums import Level, Tier, Zone
from hivemem.pool.errors import InvalidInput
from hivemem.pool.filters import And
from hivemem.pool.records import MemoryRecord, utc_now
from hivemem.pool.settings import HivememSettings
from hivemem.pool.shared import SharedMemoryPool
from hivemem.pool.zone_policy import ZonePolicy
from hivemem.workers.app import QUEUES, ROUTES, make_app
from hivemem.workers.consolidation import ScopeBusy
from hivemem.workers.locks import held
from hivemem.workers.policies import InvalidPolicy
from hivemem.workers.runtime import WorkerRuntime
from tests.waiting import wait_for
from tests.workers.test_policies import TYPO, YAML_FILE

REPO = Path(__file__).resolve().parents[2]
EVERYTHING = And(all=[])
ZONE = Zone.PUBLIC
TIMEOUT_S = 30.0


def runtime_of(app: Celery) -> WorkerRuntime:
    """The services the app's tasks use (make_app hangs them on the app)."""
    return cast("WorkerRuntime", app.hivemem_runtime)  # type: ignore[attr-defined]


def run(app: Celery, name: str, *args: Any, **kwargs: Any) -> Any:
    """Send task ``name`` through the broker and wait for its result."""
    return app.tasks[name].apply_async(args, kwargs).get(timeout=TIMEOUT_S)


# -- configuration ------------------------------------------------------------------------------


@pytest.fixture
def configured(worker_settings: Callable[..., HivememSettings]) -> Iterator[Celery]:
    """An app (no worker) on settings whose intervals and timeouts are all distinct."""
    app = make_app(
        worker_settings(
            visibility_timeout_s=7.0,
            unacked_restore_interval_s=2.0,
            ingest_interval_s=0.25,
            consolidate_interval_s=11.0,
            lifecycle_interval_s=13.0,
        )
    )
    yield app
    runtime_of(app).close()
    app.close()


def test_reliability_and_serialisation_settings(configured: Celery) -> None:
    """Tasks are acknowledged late and rejected when their process dies, one at a time, in
    JSON only, and come back after the configured visibility timeout."""
    conf = configured.conf
    assert conf.task_acks_late is True
    assert conf.task_reject_on_worker_lost is True
    assert conf.worker_prefetch_multiplier == 1
    assert (conf.task_serializer, conf.result_serializer) == ("json", "json")
    assert list(conf.accept_content) == ["json"]
    assert conf.broker_transport_options["visibility_timeout"] == 7.0
    assert conf.broker_transport_options["unacked_restore_interval"] == 2.0
    assert conf.broker_transport_options["global_keyprefix"] == "hivemem:celery:"


def test_each_queue_has_its_own_exchange_and_every_task_its_route(configured: Celery) -> None:
    """The three queues each sit on an exchange and routing key of their own name, and every
    hivemem task is routed to the queue ROUTES names."""
    queues = cast("list[Queue]", list(configured.conf.task_queues))
    assert [q.name for q in queues] == list(QUEUES)
    for queue in queues:
        assert queue.exchange.name == queue.name
        assert queue.routing_key == queue.name
    configured.finalize()
    tasks = sorted(n for n in configured.tasks if n.startswith("hivemem."))
    assert tasks == sorted(ROUTES)
    for name in tasks:
        queue = configured.amqp.router.route({}, name)["queue"]
        assert queue.name == ROUTES[name]["queue"]
        assert queue.exchange.name == queue.name
        assert queue.routing_key == queue.name


def test_the_beat_schedule_follows_the_settings(configured: Celery) -> None:
    """Beat sweeps each zone's ingest queue (expiring after two intervals), queues the due
    consolidations, and runs the lifecycle pass, at the configured intervals."""
    schedule = configured.conf.beat_schedule
    assert set(schedule) == {
        *(f"ingest-{z.value}" for z in Zone),
        "consolidate-due",
        "lifecycle",
    }
    for zone in Zone:
        entry = schedule[f"ingest-{zone.value}"]
        assert entry["task"] == "hivemem.ingest"
        assert tuple(entry["args"]) == (zone.value,)
        assert entry["schedule"] == 0.25
        assert entry["options"]["expires"] == 0.5
    assert schedule["consolidate-due"]["task"] == "hivemem.consolidate_due"
    assert schedule["consolidate-due"]["schedule"] == 11.0
    assert schedule["consolidate-due"]["options"]["expires"] == 11.0
    assert schedule["lifecycle"]["task"] == "hivemem.lifecycle"
    assert schedule["lifecycle"]["schedule"] == 13.0
    assert schedule["lifecycle"]["options"]["expires"] == 13.0


def test_an_app_needs_the_pools_redis(tmp_path: Path) -> None:
    """Without a Redis URL there is no app: InvalidInput naming redis_url."""
    with pytest.raises(InvalidInput, match="HIVEMEM_REDIS_URL") as raised:
        make_app(HivememSettings(data_dir=tmp_path, redis_url=None))
    assert raised.value.field == "redis_url"


@pytest.mark.parametrize("command", ["worker", "beat"])
def test_the_commands_have_help(command: str) -> None:
    """`hivemem worker --help` and `hivemem beat --help` print their usage and exit 0."""
    done = subprocess.run(
        [sys.executable, "-m", "hivemem.cli", command, "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert f"usage: hivemem {command}" in done.stdout


# -- tasks through a real worker ----------------------------------------------------------------


@pytest.fixture
def worker_app(worker_settings: Callable[..., HivememSettings]) -> Iterator[Celery]:
    """An app with a real worker (solo pool) consuming its queues in a thread of the test."""
    app = make_app(worker_settings(consolidation={"threshold": 1000}))
    with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=30):
        yield app
    runtime_of(app).close()
    app.close()


def test_the_ingest_task_drains_a_zone(
    worker_app: Celery, make_pool: Callable[..., SharedMemoryPool]
) -> None:
    """hivemem.ingest stores the zone's queued records and returns the drain's report; other
    zones wait for their own task."""
    agent = make_pool("agents").register_agent("writer", clearance=Zone.INTERNAL)
    ids = [agent.memory.add(f"note {i}", user_id="u1").id for i in range(3)]
    other = agent.memory.add("an internal note", user_id="u1", zone=Zone.INTERNAL)
    assert agent.flush()

    result = run(worker_app, "hivemem.ingest", ZONE.value)
    assert result == {
        "zone": ZONE.value,
        "messages": 3,
        "records": 3,
        "tombstones": 0,
        "skipped": 0,
        "due": [],
        "busy": False,
    }
    store = runtime_of(worker_app).store
    assert store.ids(ZONE, EVERYTHING) == sorted(ids)
    assert store.ids(Zone.INTERNAL, EVERYTHING) == []
    assert run(worker_app, "hivemem.ingest", ZONE.value)["messages"] == 0
    assert run(worker_app, "hivemem.ingest", Zone.INTERNAL.value)["records"] == 1
    assert store.ids(Zone.INTERNAL, EVERYTHING) == [other.id]


def test_an_ingest_behind_a_stalled_store_lock_is_retried(
    worker_app: Celery, make_pool: Callable[..., SharedMemoryPool]
) -> None:
    """A user's store lock held longer than the ingest waits for it (lock_ttl_s, 3 s here: a
    stalled move to or from the archive) makes hivemem.ingest retry after lock_retry_s, and the
    retry stores the delete once the lock is free. The task failed for good with ScopeBusy
    before (the beat's next sweep drained it again)."""
    agent = make_pool("agents").register_agent("writer", clearance=Zone.INTERNAL)
    record = agent.memory.add("a note of u1", user_id="u1")
    assert agent.flush()
    assert run(worker_app, "hivemem.ingest", ZONE.value)["records"] == 1
    agent.memory.delete(record.id)
    assert agent.flush()
    runtime = runtime_of(worker_app)
    taken = threading.Event()

    def stalled_move() -> None:
        with held(runtime.client, runtime.keys.store_lock(ZONE, "u1"), 30.0) as lock:
            assert lock.acquired
            taken.set()
            time.sleep(4.0)

    mover = threading.Thread(target=stalled_move)
    mover.start()
    assert taken.wait(10)
    report = run(worker_app, "hivemem.ingest", ZONE.value)  # its retries included
    mover.join()
    assert report["tombstones"] == 1
    assert runtime.store.presence(ZONE, [record.id]) == {record.id: True}
    # A result awaited through a retry is held in a reference cycle by Celery's result
    # consumer: collected after this test's Redis stopped, it failed a later test.
    gc.collect()


def aged(
    now: datetime, name: str, *, days: float, importance: float, **fields: Any
) -> MemoryRecord:
    """A PUBLIC episode of u1 recorded ``days`` before ``now``, with a unit vector."""
    recorded = now - timedelta(days=days)
    return MemoryRecord(
        content=f"the {name} memory",
        scope={"user_id": "u1"},
        zone=ZONE,
        level=Level.EPISODE,
        importance=importance,
        recorded_at=recorded,
        valid_from=recorded,
        vector=[1.0] + [0.0] * (MINILM_DIM - 1),
        **fields,
    )


def test_lifecycle_dry_run_matches_the_run_and_restore_brings_records_back(
    worker_app: Celery,
) -> None:
    """hivemem.lifecycle's dry run reports exactly what the real run then does with the default
    policies (archive cold unimportant records, purge old archives, refresh important ones);
    hivemem.restore by filter brings the archived records back live."""
    now = utc_now()
    records = {
        "cold": aged(now, "cold", days=60, importance=0.1),
        "cold_read_long_ago": aged(
            now, "cold read", days=80, importance=0.2, last_accessed_at=now - timedelta(days=31)
        ),
        "important": aged(now, "important", days=20, importance=0.9),
        "fresh": aged(now, "fresh", days=1, importance=0.1),
        "ancient": aged(now, "ancient", days=400, importance=0.5),
    }
    ids = {name: record.id for name, record in records.items()}
    runtime = runtime_of(worker_app)
    with runtime.store.session():
        runtime.store.upsert(ZONE, list(records.values()))
    assert run(worker_app, "hivemem.archive", ZONE.value, [ids["ancient"]]) == [ids["ancient"]]

    options = {"now": now.isoformat(), "zones": [ZONE.value]}
    dry = run(worker_app, "hivemem.lifecycle", dry_run=True, **options)
    with runtime.store.session():
        assert runtime.store.ids(ZONE, EVERYTHING) == sorted(
            ids[n] for n in ("cold", "cold_read_long_ago", "important", "fresh")
        )
        assert runtime.store.archive_ids(ZONE, EVERYTHING) == [ids["ancient"]]
    real = run(worker_app, "hivemem.lifecycle", dry_run=False, **options)
    assert real == dry
    outcomes = {o["policy"]: (o["zone"], o["action"], o["ids"]) for o in real["outcomes"]}
    cold = sorted([ids["cold"], ids["cold_read_long_ago"]])
    assert outcomes == {
        "archive_unaccessed": (ZONE.value, "archive", cold),
        "delete_old_archives": (ZONE.value, "delete", [ids["ancient"]]),
        "refresh_important": (ZONE.value, "refresh", [ids["important"]]),
    }

    store = runtime.store
    with store.session():
        assert store.ids(ZONE, EVERYTHING) == sorted([ids["important"], ids["fresh"]])
        assert store.archive_ids(ZONE, EVERYTHING) == cold
        [important] = store.get(ZONE, [ids["important"]])
        assert important.last_accessed_at == now
        # Purged: only its tombstone is left (a copy sent again is not stored).
        assert store.presence(ZONE, [ids["ancient"]]) == {ids["ancient"]: True}

    restored = run(worker_app, "hivemem.restore", ZONE.value, where={"importance_max": 0.25})
    assert sorted(restored) == cold
    with store.session():
        assert store.archive_ids(ZONE, EVERYTHING) == []
        back = store.get(ZONE, cold, with_vectors=True)
        assert [r.id for r in back] == cold
        for record in back:
            assert record.tier is Tier.SHORT_TERM
            assert record.last_accessed_at is not None
            assert record.last_accessed_at >= now
            assert record.vector is not None


def test_each_app_runs_its_tasks_on_its_own_runtime(
    worker_settings: Callable[..., HivememSettings],
    make_pool: Callable[..., SharedMemoryPool],
    tmp_path: Path,
) -> None:
    """A second app made in the same process runs its own tasks on its own zone store, not
    those of the first app."""
    settings = worker_settings(consolidation={"threshold": 1000})
    first = make_app(settings.model_copy(update={"data_dir": tmp_path / "first"}))
    second = make_app(settings)
    agent = make_pool("agents").register_agent("writer")
    record = agent.memory.add("a note", user_id="u1")
    assert agent.flush()
    try:
        report = second.tasks["hivemem.ingest"].apply((ZONE.value,)).get(timeout=TIMEOUT_S)
        assert report["records"] == 1
        assert runtime_of(second).store.ids(ZONE, EVERYTHING) == [record.id]
        assert runtime_of(first).store.ids(ZONE, EVERYTHING) == []
    finally:
        for app in (first, second):
            runtime_of(app).close()
            app.close()


def test_a_task_given_an_unknown_zone_fails_clearly(worker_app: Celery) -> None:
    """A task asked for a zone that does not exist fails (not retried) with an error naming
    the zone."""
    result = worker_app.tasks["hivemem.ingest"].delay("nowhere")
    with pytest.raises(InvalidInput, match="unknown zone 'nowhere'"):
        result.get(timeout=TIMEOUT_S)
    assert result.state == "FAILURE"


def test_a_consolidation_beyond_one_plan_queues_the_rest_at_once(
    worker_settings: Callable[..., HivememSettings], make_pool: Callable[..., SharedMemoryPool]
) -> None:
    """hivemem.consolidate with more pending episodes than one plan takes does one plan's
    worth and queues itself again for the rest: every episode ends consolidated, without
    waiting for the schedule's sweep."""
    app = make_app(worker_settings(consolidation={"threshold": 1000, "max_plan_episodes": 2}))
    agent = make_pool("agents").register_agent("writer")
    ids = [agent.memory.add(f"trip note {i} about Lisbon", user_id="u1").id for i in range(5)]
    assert agent.flush()
    runtime = runtime_of(app)
    keys = runtime.keys
    try:  # closed even when an assertion fails: a leftover app's result backend keeps retrying
        with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=30):
            run(app, "hivemem.ingest", ZONE.value)
            first = run(app, "hivemem.consolidate", ZONE.value, "u1")
            assert (first["episodes"], first["remaining"]) == (2, 3)
            # Watched in Redis, not in the zone store, which the worker's tasks are using.
            assert wait_for(
                lambda: (
                    runtime.client.scard(keys.pending(ZONE, "u1")) == 0
                    and not runtime.client.exists(keys.plan(ZONE, "u1"))
                    and runtime.consolidation.due(ZONE) == []
                ),
                timeout_s=60.0,
            )
        with runtime.store.session():
            assert all(e.consolidated_into for e in runtime.store.get(ZONE, ids))
    finally:
        runtime.close()
        app.close()


def test_a_policies_file_gone_bad_fails_the_lifecycle_task_after_the_retention(
    worker_settings: Callable[..., HivememSettings], tmp_path: Path
) -> None:
    """The worker started with a good policies file that then went bad (a typo): the lifecycle
    task still runs the zones' retention, then fails with InvalidPolicy naming the file, so
    the fleet's monitoring sees a failure instead of a log line."""
    path = tmp_path / "policies.yaml"
    path.write_text(YAML_FILE)
    settings = worker_settings(consolidation={"threshold": 1000}, policies_file=path)
    settings = settings.model_copy(update={"zone_policies": {ZONE: ZonePolicy(retention_days=30)}})
    app = make_app(settings)
    now = utc_now()
    old, young = (
        aged(now, "old", days=40, importance=0.9),
        aged(now, "young", days=1, importance=0.9),
    )
    try:
        with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=30):
            runtime = runtime_of(app)
            with runtime.store.session():
                runtime.store.upsert(ZONE, [old, young])
            path.write_text(TYPO)
            result = app.tasks["hivemem.lifecycle"].delay(now=now.isoformat(), zones=[ZONE.value])
            with pytest.raises(InvalidPolicy, match="older_than_day") as failed:
                result.get(timeout=TIMEOUT_S)
            assert str(path) in str(failed.value)
            assert result.state == "FAILURE"
            with runtime.store.session():
                assert runtime.store.ids(ZONE, EVERYTHING) == [young.id]
    finally:
        runtime_of(app).close()
        app.close()


def test_a_forget_that_stays_busy_fails_with_scope_busy_for_its_caller(
    worker_settings: Callable[..., HivememSettings],
) -> None:
    """While another forget of the user holds its lock, hivemem.forget_user is retried; once
    its retries ran out, its caller (the fleet, the CLI) gets ScopeBusy as the worker raised
    it (zone None, the user, its message), which the CLI prints as an error, not an unknown
    exception (Celery rebuilds an exception from its arguments)."""
    app = make_app(worker_settings(consolidation={"threshold": 1000}, lock_retry_s=0.01))
    runtime = runtime_of(app)
    try:
        with (
            held(runtime.client, runtime.keys.forget_lock("u1"), 30) as lock,
            start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=30),
        ):
            assert lock.acquired
            result = app.tasks["hivemem.forget_user"].delay("u1")
            with pytest.raises(ScopeBusy, match="another worker is forgetting u1") as busy:
                result.get(timeout=60)
            assert (busy.value.zone, busy.value.user_id) == (None, "u1")
            assert result.state == "FAILURE"
    finally:
        runtime.close()
        app.close()
