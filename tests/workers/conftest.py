"""Fixtures of the worker tests: settings for a fleet on the test's Redis, an in-process worker
runtime, and real `hivemem worker` processes (Celery prefork workers) the tests can kill."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hivemem.pool.adapters.edge_zone_store import EdgeZoneStore
from hivemem.pool.redis_server import EmbeddedRedis
from hivemem.pool.settings import (
    ConsolidationSettings,
    HivememSettings,
    PoolSettings,
    WorkerSettings,
)
from hivemem.workers.runtime import WorkerRuntime
from tests.conftest import shared_keys

REPO = Path(__file__).resolve().parents[2]

#: Fast recovery for fault tests: a dead worker's tasks come back 3 s after it died (see
#: ../shared/notes/services.md), locks expire 3 s after their holder.
FAST = {
    "visibility_timeout_s": 3.0,
    "unacked_restore_interval_s": 0.5,
    "lock_ttl_s": 3.0,
    "lock_retry_s": 0.5,
    "store_idle_close_s": 0.3,
    "store_open_timeout_s": 60.0,
    "ingest_interval_s": 0.3,
}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[EdgeZoneStore]:
    """An embedded zone store of 8-d vectors under this test's directory, closed after."""
    zone_store = EdgeZoneStore(tmp_path / "zones", dim=8, idle_close_s=0)
    yield zone_store
    zone_store.close()


@pytest.fixture
def worker_settings(
    tmp_path: Path, redis_server: EmbeddedRedis, settings: HivememSettings
) -> Callable[..., HivememSettings]:
    """``worker_settings(consolidation={...}, **worker_fields)``: settings of a fleet whose
    zone store lives under this test's directory, on the test's Redis."""

    def make(consolidation: dict[str, Any] | None = None, **fields: Any) -> HivememSettings:
        return HivememSettings(
            data_dir=tmp_path / "fleet",
            redis_url=redis_server.url,
            embedding=settings.embedding,
            pool=PoolSettings(retry_initial_s=0.02, retry_max_s=0.5),
            security=shared_keys(tmp_path),
            workers=WorkerSettings(
                **{**FAST, **fields},
                consolidation=ConsolidationSettings(**(consolidation or {})),
            ),
        )

    return make


@pytest.fixture
def make_runtime(
    worker_settings: Callable[..., HivememSettings],
) -> Iterator[Callable[..., WorkerRuntime]]:
    """Factory for in-process worker runtimes (the services without Celery); closed after."""
    made: list[WorkerRuntime] = []

    def make(**kwargs: Any) -> WorkerRuntime:
        runtime = WorkerRuntime(worker_settings(**kwargs))
        made.append(runtime)
        return runtime

    yield make
    for runtime in made:
        runtime.close()


def settings_env(settings: HivememSettings) -> dict[str, str]:
    """The environment that makes ``HivememSettings()`` in a child process equal ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HIVEMEM_")}
    env.update(settings.environment(), HF_HUB_OFFLINE="1")
    return env


def children(pid: int) -> list[int]:
    """The pids whose parent is ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


class WorkerProcess:
    """A `hivemem worker` in its own process group (so the whole worker can be killed)."""

    def __init__(
        self, settings: HivememSettings, log_path: Path, *args: str, env: dict[str, str]
    ) -> None:
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "hivemem.cli", "worker", "--loglevel=INFO", *args],
            cwd=REPO,
            env={**settings_env(settings), **env},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if " ready." in self.log():
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"worker not ready:\n{self.log()[-3000:]}")

    def pool_children(self) -> list[int]:
        return children(self.process.pid)

    def kill(self) -> None:
        """SIGKILL the whole worker: main process and pool children."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self._log.close()


@pytest.fixture
def spawn_worker(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """``spawn_worker(settings, *cli_args, env={...})``: start a worker process (extra
    environment variables in ``env``); all are stopped after the test."""
    started: list[WorkerProcess] = []

    def spawn(
        settings: HivememSettings, *args: str, env: dict[str, str] | None = None
    ) -> WorkerProcess:
        log_path = tmp_path / f"worker-{len(started)}.log"
        worker = WorkerProcess(settings, log_path, *args, env=env or {})
        started.append(worker)
        return worker

    yield spawn
    for worker in started:
        worker.stop()
