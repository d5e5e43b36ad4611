"""The fleet as it runs: `hivemem worker` processes (Celery prefork workers) on a real Redis,
with the embedded zone store. Ingest and consolidation end to end, a pool child and a whole
worker SIGKILLed in the middle of a consolidation, and two workers racing on one scope."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from celery import Celery

from hivemem.agents.agent import Agent
from hivemem.pool.enums import Level, Zone
from hivemem.pool.filters import And, Cond
from hivemem.pool.records import MemoryRecord
from hivemem.pool.settings import HivememSettings
from hivemem.pool.shared import SharedMemoryPool
from hivemem.workers.app import make_app
from hivemem.workers.keys import WorkerKeys
from hivemem.workers.runtime import WorkerRuntime
from tests.waiting import wait_for
from tests.workers.conftest import WorkerProcess
from tests.workers.slow_strategy import MARKERS, PAUSE

pytestmark = pytest.mark.slow
SLOW = "tests.workers.slow_strategy:SlowStrategy"
WORDS = ["garden", "tomatoes", "invoice", "flight", "piano", "python", "marathon", "coffee"]


def write_episodes(agent: Agent, count: int, zone: Zone = Zone.PUBLIC) -> list[str]:
    ids = [
        agent.memory.add(
            f"note {i} about {WORDS[i % len(WORDS)]} and {WORDS[(i * 3) % len(WORDS)]}",
            user_id="u1",
            zone=zone,
        ).id
        for i in range(count)
    ]
    assert agent.flush()
    return ids


def records(runtime: WorkerRuntime, level: Level, zone: Zone = Zone.PUBLIC) -> list[MemoryRecord]:
    where = And(all=[Cond(field="level", op="eq", value=level)])
    with runtime.store.session():
        return list(runtime.store.scan(zone, where))


def assert_consolidated_once(runtime: WorkerRuntime, episode_ids: list[str]) -> None:
    """Every episode is stored, consolidated into exactly one trace, and in exactly one trace's
    sources; no trace duplicates another."""
    with runtime.store.session():
        episodes = runtime.store.get(Zone.PUBLIC, episode_ids)
    assert sorted(e.id for e in episodes) == sorted(episode_ids)  # no episode lost
    traces = records(runtime, Level.TRACE)
    sources = [s for t in traces for s in t.sources]
    assert sorted(sources) == sorted(episode_ids)  # each in exactly one trace
    trace_ids = {t.id for t in traces}
    for episode in episodes:
        assert len(episode.consolidated_into) == 1
        assert episode.consolidated_into[0] in trace_ids


def assert_ran_again_once(settings: HivememSettings, markers: Path, ids: list[str]) -> None:
    """After a kill mid-consolidation: the strategy started again (a second marker), the run
    finished, and its outputs exist once, with one profile."""
    runtime = WorkerRuntime(settings)
    try:
        assert wait_for(lambda: len(list(markers.iterdir())) >= 2, timeout_s=60.0)
        assert wait_for(lambda: settled(runtime), timeout_s=60.0)
        assert_consolidated_once(runtime, ids)
        assert len(records(runtime, Level.DOMAIN)) == 1
    finally:
        runtime.close()


def settled(runtime: WorkerRuntime) -> bool:
    """No consolidation waiting or half done for u1 in PUBLIC."""
    keys = WorkerKeys(runtime.settings.pool.namespace)
    client = runtime.client
    return not client.exists(keys.plan(Zone.PUBLIC, "u1"), keys.pending(Zone.PUBLIC, "u1"))


@pytest.fixture
def markers(tmp_path: Path) -> Path:
    path = tmp_path / "markers"
    path.mkdir()
    return path


@pytest.fixture
def client_app() -> Iterator[Callable[..., Celery]]:
    made: list[Celery] = []

    def make(settings: HivememSettings) -> Celery:
        app = make_app(settings)
        made.append(app)
        return app

    yield make
    for app in made:
        app.close()


def test_agents_writes_are_ingested_consolidated_and_received(
    make_pool: Callable[..., SharedMemoryPool],
    worker_settings: Callable[..., HivememSettings],
    spawn_worker: Callable[..., WorkerProcess],
) -> None:
    """With a worker and its schedule running, an agent's episodes reach the zone store and
    the traces, categories and profile made from them come back to the agent."""
    settings = worker_settings(consolidation={"threshold": 20}, consolidate_interval_s=1.0)
    worker = spawn_worker(settings, "--beat", "--concurrency=2")
    pool = make_pool("agents")
    agent = pool.register_agent("writer")
    worker.wait_ready()
    ids = write_episodes(agent, 45)

    def received(level: Level) -> set[str]:
        return {
            r.id
            for r in agent.memory.list_memories(
                user_id="u1", filter={"levels": [level]}, limit=1000
            )
            if r.received_from == "hivemem-workers"
        }

    runtime = WorkerRuntime(settings)
    try:
        assert wait_for(
            lambda: received(Level.DOMAIN) != set() and settled(runtime), timeout_s=60.0
        )
        assert_consolidated_once(runtime, ids)
        traces = {r.id for r in records(runtime, Level.TRACE)}
        assert wait_for(lambda: received(Level.TRACE) == traces, timeout_s=60.0)
        assert received(Level.CATEGORY)
    finally:
        runtime.close()


def _slow_run(
    make_pool: Callable[..., SharedMemoryPool],
    worker_settings: Callable[..., HivememSettings],
    spawn_worker: Callable[..., WorkerProcess],
    client_app: Callable[..., Celery],
    markers: Path,
) -> tuple[HivememSettings, WorkerProcess, list[str]]:
    """A worker running the slow strategy, 30 episodes ingested, a consolidation started (its
    marker written); returns what the test needs to go on."""
    settings = worker_settings(consolidation={"threshold": 10_000, "strategy": SLOW})
    env = {MARKERS: str(markers), PAUSE: "3"}
    worker = spawn_worker(settings, "--concurrency=1", env=env)
    agent = make_pool("agents").register_agent("writer")
    ids = write_episodes(agent, 30)
    app = client_app(settings)
    worker.wait_ready()
    assert app.send_task("hivemem.ingest", args=["public"]).get(timeout=60)["records"] == 30
    app.send_task("hivemem.consolidate", args=["public", "u1"])
    assert wait_for(lambda: any(markers.iterdir()), timeout_s=60.0)
    return settings, worker, ids


def test_a_pool_child_killed_mid_consolidation_runs_again_and_writes_once(
    make_pool: Callable[..., SharedMemoryPool],
    worker_settings: Callable[..., HivememSettings],
    spawn_worker: Callable[..., WorkerProcess],
    client_app: Callable[..., Celery],
    markers: Path,
) -> None:
    """SIGKILL of the prefork child running a consolidation: the task is redelivered, waits
    for the dead holder's lock to expire, resumes the plan; outputs exist once, no episode is
    lost."""
    settings, worker, ids = _slow_run(make_pool, worker_settings, spawn_worker, client_app, markers)
    [child] = worker.pool_children()
    os.kill(child, signal.SIGKILL)
    assert_ran_again_once(settings, markers, ids)


def test_a_whole_worker_killed_mid_consolidation_is_replaced_and_writes_once(
    make_pool: Callable[..., SharedMemoryPool],
    worker_settings: Callable[..., HivememSettings],
    spawn_worker: Callable[..., WorkerProcess],
    client_app: Callable[..., Celery],
    markers: Path,
) -> None:
    """SIGKILL of the whole worker (main process and children): a new worker gets the
    unacknowledged task after the visibility timeout and finishes the run exactly once."""
    settings, worker, ids = _slow_run(make_pool, worker_settings, spawn_worker, client_app, markers)
    worker.kill()
    replacement = spawn_worker(settings, "--concurrency=1", env={MARKERS: str(markers)})
    replacement.wait_ready()
    assert_ran_again_once(settings, markers, ids)


def test_two_workers_racing_on_one_scope_consolidate_it_once(
    make_pool: Callable[..., SharedMemoryPool],
    worker_settings: Callable[..., HivememSettings],
    spawn_worker: Callable[..., WorkerProcess],
    client_app: Callable[..., Celery],
    markers: Path,
) -> None:
    """Two workers get a consolidation of the same scope at once: one runs it, the other
    waits for the lock and then finds nothing left to do."""
    settings = worker_settings(consolidation={"threshold": 10_000, "strategy": SLOW})
    env = {MARKERS: str(markers), PAUSE: "2"}
    first = spawn_worker(settings, "--concurrency=1", "--hostname=first@%h", env=env)
    second = spawn_worker(settings, "--concurrency=1", "--hostname=second@%h", env=env)
    agent = make_pool("agents").register_agent("writer")
    ids = write_episodes(agent, 24)
    app = client_app(settings)
    first.wait_ready()
    second.wait_ready()
    assert app.send_task("hivemem.ingest", args=["public"]).get(timeout=60)["records"] == 24
    results = [app.send_task("hivemem.consolidate", args=["public", "u1"]) for _ in range(2)]
    reports = sorted((r.get(timeout=90) for r in results), key=lambda r: r["episodes"])
    assert [r["episodes"] for r in reports] == [0, 24]
    assert reports[0]["traces"] == []
    assert len(list(markers.iterdir())) == 1  # the strategy ran once
    runtime = WorkerRuntime(settings)
    try:
        assert_consolidated_once(runtime, ids)
    finally:
        runtime.close()
