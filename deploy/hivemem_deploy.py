"""hivemem's Celery app for Celery's own command line, and the health checks of the containers.

``hivemem worker`` and ``hivemem beat`` build their app themselves; ``celery -A`` needs a module
with an app instance. This module is that entry point (the image puts it on ``PYTHONPATH``): it
reads the ``HIVEMEM_*`` environment once, on import, and builds the app the workers run, so
Flower (``celery -A hivemem_deploy flower``) and ``celery -A hivemem_deploy inspect ...`` use the
same broker, queues and Redis key prefix (``<namespace>:celery:``) as the fleet. Without that
prefix they would watch keys and channels the workers never use, and see nothing.

Run as a script, it is a container's health check (exit status 0 when healthy)::

    python -m hivemem_deploy worker   # this container's worker answers a ping through Redis
    python -m hivemem_deploy beat     # Redis answers, and beat saved its schedule lately

(Flower's check needs no app: compose asks its ``/healthcheck`` page.)
"""

from __future__ import annotations

import socket
import sys
import time

from hivemem.pool.settings import HivememSettings
from hivemem.workers.app import make_app

settings = HivememSettings()
app = make_app(settings)

#: Celery beat writes its schedule file every 3 minutes while it runs (``Scheduler.sync_every``).
BEAT_SYNC_MAX_AGE_S = 600.0


def worker_alive(timeout_s: float = 5.0) -> bool:
    """True when the worker of this host (``celery@<hostname>``, Celery's default node name)
    answers a ping through the broker within ``timeout_s`` seconds: its main process is
    consuming from Redis."""
    node = f"celery@{socket.gethostname()}"
    replies = app.control.ping(destination=[node], timeout=timeout_s)
    return any(node in reply for reply in replies)


def beat_alive(max_age_s: float = BEAT_SYNC_MAX_AGE_S) -> bool:
    """True when Redis accepts our credentials and beat's schedule file (under ``data_dir``; its
    name depends on the dbm module) was written less than ``max_age_s`` seconds ago."""
    with app.connection_for_write() as connection:
        connection.ensure_connection(max_retries=1)
    files = list(settings.data_dir.glob("celerybeat-schedule*"))
    newest = max((path.stat().st_mtime for path in files), default=0.0)
    return time.time() - newest < max_age_s


CHECKS = {"worker": worker_alive, "beat": beat_alive}


def main(argv: list[str]) -> int:
    """``python -m hivemem_deploy ROLE``: 0 when ROLE's check passes, 1 when it fails or raises,
    2 for an unknown role."""
    if len(argv) != 1 or argv[0] not in CHECKS:
        print(f"usage: python -m hivemem_deploy {{{','.join(CHECKS)}}}", file=sys.stderr)  # noqa: T201
        return 2
    try:
        healthy = CHECKS[argv[0]]()
    except Exception as error:  # noqa: BLE001 - a health check reports every failure as unhealthy
        print(f"{argv[0]} unhealthy: {error!r}", file=sys.stderr)  # noqa: T201
        return 1
    if not healthy:
        print(f"{argv[0]} unhealthy", file=sys.stderr)  # noqa: T201
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
