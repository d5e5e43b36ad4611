"""The embedded redis-server: started on a free port, restartable without losing data when
append-only, never outliving the process that started it, and closed to clients without its
password."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from hivemem.pool import shared as shared_module
from hivemem.pool.errors import PoolUnavailable
from hivemem.pool.redis_server import DirectoryBusy, EmbeddedRedis, hide_password
from hivemem.pool.settings import HivememSettings
from hivemem.pool.shared import SharedMemoryPool


def test_an_append_only_server_keeps_its_data_across_a_restart(tmp_path: Path) -> None:
    """Stop and start on the same directory and port: every acknowledged write is there."""
    with EmbeddedRedis(tmp_path / "r", appendonly=True) as server:
        client = redis.Redis.from_url(server.url)
        client.set("k", "v")
        server.stop()
        assert not server.running
        server.start()
        assert client.get("k") == b"v"
        client.close()


#: Clients that give up at the first refusal (redis-py retries a failed login by default).
_ONCE = Retry(NoBackoff(), 0)


def _serving(port: int) -> bool:
    """Whether a server answers on ``port`` (a refusal to log in is an answer)."""
    try:
        client = redis.Redis(port=port, socket_connect_timeout=0.2, retry=_ONCE)
        return bool(client.ping())
    except redis.AuthenticationError:
        return True
    except redis.ConnectionError:
        return False


def test_only_clients_with_the_password_get_in(tmp_path: Path) -> None:
    """The default user needs the password the URL carries: without it, or with another, every
    command is refused, so a local process that merely reaches the port reads nothing."""
    with EmbeddedRedis(tmp_path / "r") as server:
        with redis.Redis.from_url(server.url) as client:
            client.set("k", "v")
        with (
            redis.Redis(port=server.port, retry=_ONCE) as anonymous,
            pytest.raises(redis.AuthenticationError),
        ):
            anonymous.get("k")
        with (
            redis.Redis(port=server.port, password="guess", retry=_ONCE) as guessing,
            pytest.raises(redis.AuthenticationError),
        ):
            guessing.get("k")


def test_the_password_stays_private_and_the_same_across_restarts(tmp_path: Path) -> None:
    """It is made once, kept in files only the owner can read, never put on the server's
    command line (which every local user can read) and never shown in the server's repr."""
    directory = tmp_path / "r"
    with EmbeddedRedis(directory, appendonly=True) as server:
        password = (directory / "password").read_text().strip()
        assert len(password) >= 40
        assert server.url == f"redis://:{password}@127.0.0.1:{server.port}/0"
        for name in ("password", "redis.conf"):
            assert (directory / name).stat().st_mode & 0o777 == 0o600
        assert server.pid is not None
        command_line = Path(f"/proc/{server.pid}/cmdline").read_bytes()
        assert str(server.port).encode() in command_line
        assert password.encode() not in command_line
        assert password not in repr(server)
        assert password not in server.shown_url
        first_url = server.url
    again = EmbeddedRedis(directory, port=server.port, appendonly=True)
    assert again.url == first_url
    with again, redis.Redis.from_url(again.url) as client:
        assert client.ping()


def test_shown_urls_hide_only_the_password() -> None:
    """Logs and messages get the URL with ``***`` for the password, the rest as it was."""
    assert hide_password("redis://:s3cret@127.0.0.1:6390/0") == "redis://:***@127.0.0.1:6390/0"
    assert (
        hide_password("rediss://agent:p%40ss@redis.example:6380/2?ssl_cert_reqs=none")
        == "rediss://agent:***@redis.example:6380/2?ssl_cert_reqs=none"
    )
    assert hide_password("redis://127.0.0.1:6390/0") == "redis://127.0.0.1:6390/0"


def test_the_server_dies_with_the_process_that_started_it(tmp_path: Path) -> None:
    """A SIGKILLed owner leaves no redis-server behind."""
    script = (
        "import time\n"
        "from hivemem.pool.redis_server import EmbeddedRedis\n"
        f"server = EmbeddedRedis({str(tmp_path / 'r')!r}).start()\n"
        "print('PORT', server.port, flush=True)\n"
        "time.sleep(60)\n"
    )
    owner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout is not None
        line = ""
        while not line.startswith("PORT"):
            line = owner.stdout.readline()
        port = int(line.split()[1])
        assert _serving(port)
        owner.send_signal(signal.SIGKILL)
        owner.wait(timeout=10)
        deadline = time.monotonic() + 10
        while _serving(port) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _serving(port)
    finally:
        if owner.poll() is None:
            os.kill(owner.pid, signal.SIGKILL)


def test_one_server_runs_on_a_directory_at_a_time(tmp_path: Path) -> None:
    """A second server on a directory whose server runs (another process, or two pools on one
    data directory) raises PoolUnavailable and starts nothing; once the first stops, it
    starts. Before, both ran and appended to one append-only file, and the next start
    replayed the two as one dataset."""
    first = EmbeddedRedis(tmp_path / "redis", appendonly=True).start()
    second = EmbeddedRedis(tmp_path / "redis", appendonly=True)
    try:
        with pytest.raises(PoolUnavailable, match="hivemem up"):
            second.start()
        assert not second.running
        redis.Redis.from_url(first.url).set("k", "first")
        first.stop()
        second.start()
        assert redis.Redis.from_url(second.url).get("k") == b"first"
    finally:
        first.stop()
        second.stop()


def test_a_second_pool_on_one_data_directory_waits_for_the_first(
    tmp_path: Path, settings: HivememSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SharedMemoryPool.connect on a data directory whose embedded Redis another pool runs
    waits for it to stop (a hivemem command ending), then starts its own on the same files; it
    raises DirectoryBusy (a PoolUnavailable naming `hivemem up`) when the other one stays past
    the wait. It started a second server beside the first before, on the same files."""
    here = HivememSettings(data_dir=tmp_path / "data", embedding=settings.embedding)
    monkeypatch.setattr(shared_module, "EMBEDDED_WAIT_S", 1.0)
    with SharedMemoryPool.connect(here), pytest.raises(DirectoryBusy, match="hivemem up"):
        SharedMemoryPool.connect(here)
    monkeypatch.setattr(shared_module, "EMBEDDED_WAIT_S", 30.0)
    first = SharedMemoryPool.connect(here)
    first.registry.client.set("written-by", "first")
    closer = threading.Timer(1.0, first.close)
    closer.start()
    with SharedMemoryPool.connect(here) as second:
        assert second.registry.client.get("written-by") == b"first"
    closer.join()


_FORKING_OWNER = """
import os, signal, sys, time
from hivemem.pool.redis_server import EmbeddedRedis
server = EmbeddedRedis(sys.argv[1], appendonly=True).start()
child = os.fork()
if child == 0:
    os.close(1)  # the test reads the owner's output to its end: not this child's
    os.close(2)
    time.sleep(30)
    os._exit(0)
print(f"child={child}", flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_child_forked_beside_the_server_leaves_the_directory_to_others(tmp_path: Path) -> None:
    """A process that ran the embedded server forked a child and was killed: its server died
    with it, and the child, still running, does not keep the directory locked (it shared the
    lock's open file). Before, every hivemem process on the directory failed until the child
    ended."""
    owner = subprocess.run(
        [sys.executable, "-c", _FORKING_OWNER, str(tmp_path / "redis")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    [child] = [int(w.split("=")[1]) for w in owner.stdout.split() if w.startswith("child=")]
    try:
        server = EmbeddedRedis(tmp_path / "redis", appendonly=True).start(wait_s=10.0)
        assert server.running
        assert redis.Redis.from_url(server.url).ping()
        server.stop()
    finally:
        os.kill(child, signal.SIGKILL)
