"""The Celery tasks: thin. Each decodes its arguments, calls a service of the worker's runtime
inside a store session, and returns a JSON-able report.

Task boundaries are isolation points: a transient failure (Redis or Qdrant unreachable, the
embedded store held by another process, the scope locked by another worker) is retried with
back-off; anything else fails the task with its traceback in the logs. structlog context
carries the task id (bound for every task by :func:`bind_task`), and the zone and scope.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from datetime import datetime
from typing import Any, TypeVar

import redis
import structlog
from celery import Celery, Task

from hivemem.pool.enums import Zone, checked_zone
from hivemem.pool.errors import StoreBusy, StoreUnavailable
from hivemem.pool.filters import parse_filter
from hivemem.pool.ids import check_record_id, check_scope_id
from hivemem.pool.records import utc_now
from hivemem.workers.consolidation import ScopeBusy
from hivemem.workers.policies import InvalidPolicy, InvalidPolicyFile, configured_policies
from hivemem.workers.runtime import WorkerRuntime

log = structlog.get_logger(__name__)
_TRANSIENT = (StoreBusy, StoreUnavailable, redis.ConnectionError, redis.TimeoutError)
_RETRIES = 50
T = TypeVar("T")


def bind_task(task_id: str | None = None, task: Task | None = None, **_: object) -> None:
    """celery ``task_prerun``: every log line of the task carries its id and name."""
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(task_id=task_id, task=getattr(task, "name", None))


def unbind_task(**_: object) -> None:
    """celery ``task_postrun``."""
    structlog.contextvars.clear_contextvars()


def unless_busy(task: Task, runtime: WorkerRuntime, work: Callable[[], T]) -> T:
    """``work()`` inside a store session; while another worker holds one of its scopes
    (ScopeBusy), ``task`` is retried later instead."""
    try:
        with runtime.store.session():
            return work()
    except ScopeBusy as busy:
        raise task.retry(
            exc=busy, countdown=runtime.settings.workers.lock_retry_s, max_retries=_RETRIES
        ) from None


def register_tasks(app: Celery, runtime: WorkerRuntime) -> None:
    """Define hivemem's tasks on ``app``, each using ``runtime``."""
    settings = runtime.settings
    # shared=False: Celery's default also gives each task to every app created later in the
    # process, where it would shadow that app's own task and run on this app's runtime.
    options: dict[str, Any] = {
        "shared": False,
        "autoretry_for": _TRANSIENT,
        "retry_backoff": 0.5,
        "retry_backoff_max": 30,
        "max_retries": _RETRIES,
    }

    @app.task(name="hivemem.ingest", bind=True, **options)
    def ingest(self: Task, zone: str) -> dict[str, Any]:
        """Drain the zone's ingest queue into the zone store (a bounded amount per task; the
        task queues itself again when more is waiting); retried while a user's store lock
        stays taken (a stalled move to or from the archive)."""
        chosen = checked_zone(zone)
        structlog.contextvars.bind_contextvars(zone=chosen.value)
        limit = settings.workers.ingest_batch * 16
        report = unless_busy(
            self,
            runtime,
            lambda: runtime.ingest.drain(
                chosen,
                max_messages=limit,
                on_due=lambda user_id: consolidate.delay(chosen.value, user_id),
            ),
        )
        if report.messages >= limit:
            ingest.delay(chosen.value)
        return asdict(report)

    @app.task(name="hivemem.consolidate", bind=True, **options)
    def consolidate(self: Task, zone: str, user_id: str) -> dict[str, Any]:
        """Consolidate one scope; retried while another worker holds it."""
        chosen = checked_zone(zone)
        user = check_scope_id(user_id, field="user_id")
        structlog.contextvars.bind_contextvars(zone=chosen.value, user_id=user)
        report = unless_busy(self, runtime, lambda: runtime.consolidation.consolidate(chosen, user))
        if report.remaining:  # more than one plan's worth was pending: go on at once
            consolidate.delay(chosen.value, user)
        return asdict(report)

    @app.task(name="hivemem.consolidate_due", **options)
    def consolidate_due() -> dict[str, list[str]]:
        """Queue a consolidation for every scope with episodes waiting (the schedule's sweep)."""
        queued: dict[str, list[str]] = {}
        for zone in Zone:
            for user_id in runtime.consolidation.due(zone):
                consolidate.delay(zone.value, user_id)
                queued.setdefault(zone.value, []).append(user_id)
        return queued

    _register_lifecycle_tasks(app, runtime, options, consolidate)


def _register_lifecycle_tasks(
    app: Celery, runtime: WorkerRuntime, options: dict[str, Any], consolidate: Task
) -> None:
    """The tasks of the ``lifecycle`` queue: policies, archival, restore, forgetting."""
    settings = runtime.settings

    @app.task(name="hivemem.lifecycle", **options)
    def lifecycle(
        dry_run: bool = False, now: str | None = None, zones: list[str] | None = None
    ) -> dict[str, Any]:
        """One pass of the configured policies over the zones (all by default). When the
        policies file has gone bad since the worker started, the zones' retention still runs
        and then the task fails with InvalidPolicy naming the file, so that monitoring sees
        it (a dry run returns its report: what retention alone would do)."""
        at = datetime.fromisoformat(now) if now is not None else utc_now()
        chosen = [checked_zone(z) for z in zones] if zones else list(Zone)
        broken: InvalidPolicyFile | None = None
        try:
            policies = configured_policies(settings.workers, settings.zone_policies, strict=True)
        except InvalidPolicyFile as error:
            broken = error
            policies = configured_policies(settings.workers, settings.zone_policies)  # logged
        with runtime.store.session():
            report = runtime.lifecycle.run(chosen, policies, now=at, dry_run=dry_run)
        if broken is not None and not dry_run:  # a dry run reports what retention would do
            # InvalidPolicy (message, field): what Celery rebuilds for the caller as it was.
            raise InvalidPolicy(
                f"{broken} (ran the zones' retention alone: {report.count()} records)",
                field=broken.field,
            )
        result: dict[str, Any] = report.model_dump(mode="json")
        return result

    @app.task(name="hivemem.archive", bind=True, **options)
    def archive(self: Task, zone: str, ids: list[str]) -> list[str]:
        """Move records to the zone's archive; returns the ids moved. Retried while another
        worker holds the scope of one of their users."""
        chosen = checked_zone(zone)
        checked = [check_record_id(i) for i in ids]
        return unless_busy(self, runtime, lambda: runtime.archive.archive(chosen, checked))

    @app.task(name="hivemem.forget_user", bind=True, **options)
    def forget_user(self: Task, user_id: str) -> dict[str, Any]:
        """Forget a user in every zone's store and archive, and tombstone it at every agent;
        returns the receipt. Retried while a consolidation of the user, or another forget
        of them, runs."""
        user = check_scope_id(user_id, field="user_id")
        structlog.contextvars.bind_contextvars(user_id=user)
        receipt = unless_busy(
            self,
            runtime,
            lambda: runtime.forget.forget_user(
                user, list(Zone), on_due=lambda zone, due: consolidate.delay(zone.value, due)
            ),
        )
        result: dict[str, Any] = receipt.model_dump(mode="json")
        return result

    @app.task(name="hivemem.reseal", bind=True, **options)
    def reseal(self: Task, zone: str) -> dict[str, Any]:
        """Re-seal a zone's store and archive under its active key (after a rotation);
        returns the receipt. Retried while a consolidation of one of its users runs."""
        chosen = checked_zone(zone)
        receipt = unless_busy(
            self,
            runtime,
            lambda: runtime.reseal.reseal(
                chosen, on_due=lambda due: consolidate.delay(chosen.value, due)
            ),
        )
        result: dict[str, Any] = receipt.model_dump(mode="json")
        return result

    @app.task(name="hivemem.restore", bind=True, **options)
    def restore(
        self: Task, zone: str, ids: list[str] | None = None, where: dict[str, Any] | None = None
    ) -> list[str]:
        """Bring archived records back, by ids or by filter (MemoryFilter data). Retried while
        another worker holds the scope of one of their users."""
        chosen = checked_zone(zone)
        checked = [check_record_id(i) for i in ids] if ids is not None else None
        expression = parse_filter(where).to_expr() if where is not None else None
        return unless_busy(
            self, runtime, lambda: runtime.archive.restore(chosen, ids=checked, where=expression)
        )
