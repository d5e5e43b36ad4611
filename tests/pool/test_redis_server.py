"""The embedded redis-server: started on a free port, restartable without losing data when
append-only, and never outliving the process that started it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import redis

from hivemem.pool.redis_server import EmbeddedRedis


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


def _serving(port: int) -> bool:
    try:
        return bool(redis.Redis(port=port, socket_connect_timeout=0.2).ping())
    except redis.ConnectionError:
        return False


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
