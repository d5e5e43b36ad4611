"""``hivemem up``: the embedded stack on one machine — a Redis server of our own and a Celery
worker process that also runs the schedule (beat), with the zone stores embedded (Qdrant Edge
under ``<data_dir>/zones``) unless ``HIVEMEM_QDRANT_URL`` names a server.

While it runs, ``<data_dir>/stack.json`` tells other processes where its Redis is, so pools and
``hivemem`` commands on the same data directory attach to it (see
:mod:`hivemem.pool.stack_file`). The worker is restarted when it dies; its output goes to
``<data_dir>/logs/worker.log``. Stopping (interrupt, or :meth:`EmbeddedStack.stop`) shuts the
worker down warmly, then the server, which flushes its append-only file.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import structlog

from hivemem.pool.errors import PoolUnavailable
from hivemem.pool.redis_server import (
    DirectoryBusy,
    EmbeddedRedis,
    die_with_parent,
    hide_password,
)
from hivemem.pool.settings import HivememSettings
from hivemem.pool.stack_file import (
    StackInfo,
    remove_stack,
    running_stack,
    stack_path,
    write_stack,
)
from hivemem.workers.runtime import WorkerRuntime

log = structlog.get_logger(__name__)

_READY_TIMEOUT_S = 90.0
#: How long `hivemem up` waits for a hivemem command running its own Redis on the data
#: directory to end (one waiting for a worker gives up within its own timeout).
STACK_WAIT_S = 120.0
_STOP_TIMEOUT_S = 20.0
_RESTART_BACKOFF_S = (1.0, 2.0, 5.0, 10.0, 30.0)


class WorkerProcess:
    """One ``hivemem worker --beat`` child in its own process group."""

    def __init__(self, settings: HivememSettings, log_path: Path, concurrency: int) -> None:
        self.log_path = log_path
        self._settings = settings
        self._concurrency = concurrency
        self._process: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self._settings.environment()}
        with self.log_path.open("ab") as output:
            self._process = subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
                [
                    sys.executable, "-m", "hivemem.cli", "worker", "--beat",
                    f"--concurrency={self._concurrency}", "--loglevel=INFO",
                ],
                env=env,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent,  # noqa: PLW1509 - only prctl, no locks taken
            )  # fmt: skip
        self._log_offset = self.log_path.stat().st_size

    def exited(self) -> bool:
        return self._process is None or self._process.poll() is not None

    def wait_ready(self, timeout_s: float = _READY_TIMEOUT_S) -> None:
        """Wait for Celery's "ready" line; raises PoolUnavailable if the worker exits or the
        timeout passes first."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self.log_path.open("rb") as output:
                output.seek(self._log_offset)
                if b" ready." in output.read():
                    return
            if self.exited():
                break
            time.sleep(0.1)
        raise PoolUnavailable(f"the worker did not start; see {self.log_path}")

    def stop(self) -> None:
        """SIGTERM (Celery's warm shutdown: running tasks finish), then SIGKILL the group."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                log.warning("worker_stop_timeout", pid=process.pid)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


class EmbeddedStack:
    """Redis and a worker (with beat) for ``settings.data_dir``. A context manager: entering
    starts both and publishes ``stack.json``; leaving stops them. Raises PoolUnavailable when
    another stack runs on the same data directory or a part does not start."""

    def __init__(self, settings: HivememSettings, *, worker_concurrency: int = 1) -> None:
        self._data_dir = settings.data_dir.resolve()
        self.redis = EmbeddedRedis(self._data_dir / "redis", appendonly=True)
        self.settings = settings.model_copy(
            update={"redis_url": self.redis.url, "data_dir": self._data_dir}
        )
        self.worker = WorkerProcess(
            self.settings, self._data_dir / "logs" / "worker.log", worker_concurrency
        )
        self._stopping = threading.Event()

    @property
    def redis_url(self) -> str:
        return self.redis.url

    def start(self) -> EmbeddedStack:
        other = running_stack(self._data_dir)
        if other is not None:
            raise PoolUnavailable(
                f"a stack already runs on {self._data_dir} (pid {other.owner_pid}, "
                f"{hide_password(other.redis_url)})"
            )
        # The worker child would exit at once on a bad setting, restarted for ever: fail here.
        WorkerRuntime(self.settings).check()
        try:
            self.redis.start()
        except DirectoryBusy:  # a hivemem command runs its own Redis there: wait for it
            log.warning("stack_waiting_for_directory", directory=str(self.redis.directory),
                        wait_s=STACK_WAIT_S)  # fmt: skip
            self.redis.start(wait_s=STACK_WAIT_S)
        try:
            self.worker.start()
            self.worker.wait_ready()
        except BaseException:
            self.worker.stop()
            self.redis.stop()
            raise
        self._publish()
        log.info("stack_started", redis_url=self.redis.shown_url, worker_pid=self.worker.pid)
        return self

    def _publish(self) -> None:
        pids = [] if self.worker.pid is None else [self.worker.pid]
        info = StackInfo(redis_url=self.redis.url, owner_pid=os.getpid(), worker_pids=pids)
        write_stack(self._data_dir, info)

    def serve_forever(self, *, announce: bool = True) -> None:
        """Run until SIGINT or SIGTERM, restarting the worker when it dies (with back-off)."""

        def on_signal(*_: object) -> None:
            self._stopping.set()

        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        if announce:
            print(  # noqa: T201 - the one thing `hivemem up` has to say
                f"hivemem stack up: Redis {self.redis.shown_url}, data in {self._data_dir}, "
                f"worker log {self.worker.log_path}.\n"
                f"Pools and hivemem commands with HIVEMEM_DATA_DIR={self._data_dir} use it "
                f"(or set HIVEMEM_REDIS_URL to the redis_url in {stack_path(self._data_dir)}, "
                f"which holds the password). Ctrl-C stops it.",
                flush=True,
            )
        try:
            restarts = 0
            while not self._stopping.wait(1.0):
                if self.worker.exited():
                    pause = _RESTART_BACKOFF_S[min(restarts, len(_RESTART_BACKOFF_S) - 1)]
                    log.warning("worker_died_restarting", restarts=restarts, pause_s=pause)
                    if self._stopping.wait(pause):
                        break
                    self.worker.start()
                    self._publish()
                    restarts += 1
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def stop(self) -> None:
        """Stop the worker, then Redis; remove ``stack.json``. Idempotent."""
        self._stopping.set()
        remove_stack(self._data_dir)
        try:
            self.worker.stop()
        finally:
            self.redis.stop()
        log.info("stack_stopped")

    def __enter__(self) -> EmbeddedStack:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
