"""The Celery app of the worker fleet, on the pool's Redis.

Queues and routing: ``ingest`` (draining ingest queues), ``consolidate`` (one task per scope),
``lifecycle`` (policies, archival, restore, forgetting, re-sealing). Reliability settings,
chosen from measurements (see ``../shared/notes/services.md`` and docs/workers.md):

- ``task_acks_late`` + ``task_reject_on_worker_lost``: a task is acknowledged when it finished;
  if its process dies (SIGKILL of a pool child) it goes back to the queue at once;
- a whole worker that dies leaves its tasks unacknowledged in Redis; they are handed out again
  after ``visibility_timeout_s``, which must therefore exceed the longest task;
- prefetch 1, JSON only, results in Redis for a day;
- beat: an ingest sweep per zone every ``ingest_interval_s`` (expiring, so a stopped fleet does
  not come back to a pile of sweeps), due consolidations every ``consolidate_interval_s``, a
  lifecycle pass every ``lifecycle_interval_s``.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.signals import task_postrun, task_prerun, worker_process_init, worker_process_shutdown
from kombu.entity import Exchange, Queue

from hivemem.pool.enums import Zone
from hivemem.pool.errors import InvalidInput
from hivemem.pool.settings import RESULT_TTL_S, HivememSettings
from hivemem.workers.runtime import WorkerRuntime
from hivemem.workers.tasks import bind_task, register_tasks, unbind_task

QUEUES = ("ingest", "consolidate", "lifecycle")
ROUTES = {
    "hivemem.ingest": {"queue": "ingest"},
    "hivemem.consolidate": {"queue": "consolidate"},
    "hivemem.consolidate_due": {"queue": "consolidate"},
    "hivemem.lifecycle": {"queue": "lifecycle"},
    "hivemem.archive": {"queue": "lifecycle"},
    "hivemem.restore": {"queue": "lifecycle"},
    "hivemem.forget_user": {"queue": "lifecycle"},
    "hivemem.reseal": {"queue": "lifecycle"},
}


def make_app(settings: HivememSettings) -> Celery:
    """A Celery app with hivemem's tasks, bound to ``settings``. Raises InvalidInput when no
    Redis URL is set (the workers share the agents' Redis; `hivemem up` starts one)."""
    if settings.redis_url is None:
        raise InvalidInput(
            "the workers need the pool's Redis: set HIVEMEM_REDIS_URL", field="redis_url"
        )
    workers = settings.workers
    app = Celery("hivemem", broker=settings.redis_url, backend=settings.redis_url,
                 set_as_current=False)  # fmt: skip
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_expires=RESULT_TTL_S,
        task_queues=[
            Queue(name, Exchange(name), routing_key=name)  # type: ignore[no-untyped-call]
            for name in QUEUES
        ],
        task_default_queue="ingest",
        task_routes=ROUTES,
        broker_transport_options={
            "visibility_timeout": workers.visibility_timeout_s,
            "unacked_restore_interval": workers.unacked_restore_interval_s,
            "unacked_restore_throttle": 1,
            "global_keyprefix": f"{settings.pool.namespace}:celery:",
        },
        result_backend_transport_options={"global_keyprefix": f"{settings.pool.namespace}:celery:"},
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        beat_schedule=_schedule(settings),
    )
    runtime = WorkerRuntime(settings)
    app.hivemem_runtime = runtime  # read by the tests and the CLI
    register_tasks(app, runtime)
    worker_process_init.connect(lambda **_: runtime.reset(), weak=False)
    worker_process_shutdown.connect(lambda **_: runtime.close(), weak=False)
    return app


def _schedule(settings: HivememSettings) -> dict[str, dict[str, Any]]:
    workers = settings.workers
    schedule: dict[str, dict[str, Any]] = {
        f"ingest-{zone.value}": {
            "task": "hivemem.ingest",
            "schedule": workers.ingest_interval_s,
            "args": (zone.value,),
            "options": {"expires": workers.ingest_interval_s * 2},
        }
        for zone in Zone
    }
    schedule["consolidate-due"] = {
        "task": "hivemem.consolidate_due",
        "schedule": workers.consolidate_interval_s,
        "options": {"expires": workers.consolidate_interval_s},
    }
    schedule["lifecycle"] = {
        "task": "hivemem.lifecycle",
        "schedule": workers.lifecycle_interval_s,
        "options": {"expires": workers.lifecycle_interval_s},
    }
    return schedule


task_prerun.connect(bind_task, weak=False)
task_postrun.connect(unbind_task, weak=False)
