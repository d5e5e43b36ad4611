"""The embedded stack (`hivemem up`): Redis and a worker with beat started for a data
directory, found by pools and the fleet client through stack.json, one stack per directory, a
dead worker restarted, and everything stopped on interrupt."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from hivemem.pool.errors import InvalidInput, PoolUnavailable
from hivemem.pool.settings import HivememSettings
from hivemem.pool.shared import SharedMemoryPool
from hivemem.pool.stack_file import StackInfo, running_stack, write_stack
from hivemem.workers.fleet import Fleet
from hivemem.workers.stack import EmbeddedStack
from tests.waiting import wait_for
from tests.workers.conftest import REPO, settings_env

pytestmark = pytest.mark.slow


@pytest.fixture
def stack_settings(
    tmp_path: Path, worker_settings: Callable[..., HivememSettings]
) -> HivememSettings:
    """Settings of a stack of its own: no Redis URL, a data directory of this test."""
    return worker_settings().model_copy(update={"redis_url": None, "data_dir": tmp_path / "up"})


def answers(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_connect_timeout=0.5)
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False
    finally:
        client.close()


def test_pools_and_the_fleet_find_the_stack_and_it_stops_cleanly(
    stack_settings: HivememSettings,
) -> None:
    """A pool on the data directory uses the stack's Redis (starting none of its own), a task
    goes through the stack's worker (from the API and from `hivemem forget`), a second stack
    is refused, and stopping removes
    stack.json, the worker and Redis."""
    stack = EmbeddedStack(stack_settings).start()
    try:
        found = running_stack(stack_settings.data_dir.resolve())
        assert found is not None
        assert found.redis_url == stack.redis_url
        with SharedMemoryPool.connect(stack_settings) as pool:
            assert pool.server is None
            assert pool.bus.client.ping()
        with Fleet(stack.settings) as fleet:
            receipt = fleet.forget_user("nobody")
            assert receipt.removed == 0
            with pytest.raises(InvalidInput):
                fleet.forget_user("bad id\r\nFLUSHALL")
        env = settings_env(stack_settings)
        env.pop("HIVEMEM_REDIS_URL", None)
        done = subprocess.run(  # `hivemem forget` finds the stack and its worker by itself
            [sys.executable, "-m", "hivemem.cli", "forget", "nobody", "--json"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["user_id"] == "nobody"
        with pytest.raises(PoolUnavailable, match="already runs"):
            EmbeddedStack(stack_settings).start()
        worker_pid = stack.worker.pid
    finally:
        stack.stop()
    assert running_stack(stack_settings.data_dir.resolve()) is None
    assert not answers(stack.redis_url)
    assert worker_pid is not None
    assert not Path(f"/proc/{worker_pid}").exists() or "Z" in _state(worker_pid)


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_a_stale_stack_file_is_ignored(tmp_path: Path) -> None:
    """A stack.json whose owner is dead does not redirect anyone."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    write_stack(tmp_path, StackInfo(redis_url="redis://127.0.0.1:1/0", owner_pid=dead.pid))
    assert running_stack(tmp_path) is None


def test_hivemem_up_restarts_a_dead_worker_and_stops_on_interrupt(
    stack_settings: HivememSettings,
) -> None:
    """`hivemem up` publishes stack.json (readable by its owner only: its URL holds Redis's
    password); SIGKILLing its worker brings a new one; SIGINT stops everything with exit code 0
    and removes stack.json. The password is in neither its output nor the worker's log."""
    data_dir = stack_settings.data_dir.resolve()
    env = settings_env(stack_settings)
    env.pop("HIVEMEM_REDIS_URL", None)
    up = subprocess.Popen(
        [sys.executable, "-m", "hivemem.cli", "up"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert wait_for(lambda: running_stack(data_dir) is not None, timeout_s=90)
        first = running_stack(data_dir)
        assert first is not None
        assert answers(first.redis_url)
        assert (data_dir / "stack.json").stat().st_mode & 0o777 == 0o600
        os.killpg(first.worker_pids[0], signal.SIGKILL)

        def restarted() -> bool:
            now = running_stack(data_dir)
            return now is not None and now.worker_pids != first.worker_pids

        assert wait_for(restarted, timeout_s=60)
        up.send_signal(signal.SIGINT)
        output, _ = up.communicate(timeout=60)
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
    assert up.returncode == 0, output
    assert "hivemem stack up" in output
    password = (data_dir / "redis" / "password").read_text().strip()
    assert password in first.redis_url
    assert password not in output
    worker_log = (data_dir / "logs" / "worker.log").read_text()
    assert "redis://" in worker_log
    assert password not in worker_log
    assert not (data_dir / "stack.json").exists()
    assert not answers(first.redis_url)


def test_a_bad_worker_setting_fails_before_anything_starts(
    tmp_path: Path, worker_settings: Callable[..., HivememSettings]
) -> None:
    """`hivemem up` with a consolidation strategy that is none fails at once with the typed
    error, before Redis or the worker starts (the worker child would exit at start and be
    restarted for ever, and up would only time out)."""
    bad = worker_settings(consolidation={"strategy": "collections:OrderedDict"})
    settings = bad.model_copy(update={"redis_url": None, "data_dir": tmp_path / "up"})
    with pytest.raises(InvalidInput, match="not a ConsolidationStrategy"):
        EmbeddedStack(settings).start()
    assert running_stack(settings.data_dir) is None
