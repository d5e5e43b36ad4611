"""``Fleet``: asking the worker fleet for work from any process (an agent's, the CLI's) and
waiting for the answer.

Tasks go through the Celery broker on the pool's Redis; the answer comes back through the
result backend. A fleet with no worker running leaves the task queued (nothing is lost): the
wait times out with PoolUnavailable and the task runs when a worker starts.
"""

from __future__ import annotations

from typing import Any

import celery.exceptions

from hivemem.pool.enums import Zone
from hivemem.pool.errors import InvalidInput, PoolUnavailable
from hivemem.pool.ids import check_scope_id
from hivemem.pool.settings import RESULT_TTL_S, HivememSettings
from hivemem.workers.app import make_app
from hivemem.workers.forget import ForgetReceipt
from hivemem.workers.reseal import ResealReceipt

#: The longest a caller may wait for a task, in seconds: as long as the results are kept.
MAX_WAIT_S = RESULT_TTL_S


def check_timeout(timeout_s: object) -> float:
    """``timeout_s`` if it is a finite number of seconds above 0 and at most MAX_WAIT_S, else
    InvalidInput: NaN or infinity would wait forever, 0 or less would give up at once while
    the task stays queued and runs later."""
    if (
        isinstance(timeout_s, bool)
        or not isinstance(timeout_s, int | float)
        or not 0 < timeout_s <= MAX_WAIT_S  # False for NaN
    ):
        shown = repr(timeout_s)[:40]
        raise InvalidInput(
            f"timeout_s must be a number of seconds above 0 and at most {MAX_WAIT_S:g}: {shown}",
            field="timeout_s",
        )
    return float(timeout_s)


class Fleet:
    """A client of the workers on ``settings.redis_url``."""

    def __init__(self, settings: HivememSettings) -> None:
        self._app = make_app(settings)

    def _call(self, task: str, args: list[Any], timeout_s: float) -> Any:
        """Queue ``task`` and wait up to ``timeout_s`` for its result. Raises InvalidInput
        (nothing queued) unless ``timeout_s`` is a number of seconds in (0, MAX_WAIT_S]."""
        check_timeout(timeout_s)
        result = self._app.send_task(task, args=args)
        try:
            return result.get(timeout=timeout_s)
        except celery.exceptions.TimeoutError:
            # Stop listening for the answer now, while Redis is reachable: the backend would
            # otherwise keep the result (and its subscription) until the app is collected.
            self._app.backend.remove_pending_result(result)
            raise PoolUnavailable(
                f"no worker finished {task} within {timeout_s:g} s (it stays queued; is a "
                "worker running? `hivemem up` or `hivemem worker`)"
            ) from None

    def forget_user(self, user_id: str, *, timeout_s: float = 60.0) -> ForgetReceipt:
        """Forget ``user_id`` in every zone store and archive and tombstone it at every agent
        (see :mod:`hivemem.workers.forget`). Raises InvalidInput (a bad id or timeout: nothing
        queued), PoolUnavailable."""
        user = check_scope_id(user_id, field="user_id")
        done = self._call("hivemem.forget_user", [user], timeout_s)
        return ForgetReceipt.model_validate(done)

    def reseal(self, zone: Zone, *, timeout_s: float = 300.0) -> ResealReceipt:
        """Re-seal ``zone``'s store and archive under its active key, after a rotation (see
        :mod:`hivemem.workers.reseal`). Raises InvalidInput (a bad timeout: nothing queued),
        PoolUnavailable."""
        done = self._call("hivemem.reseal", [zone.value], timeout_s)
        return ResealReceipt.model_validate(done)

    def queue_reseal(self, zone: Zone) -> None:
        """:meth:`reseal` without waiting: a worker picks it up when one runs."""
        self._app.send_task("hivemem.reseal", args=[zone.value])

    def consolidate(self, zone: Zone, user_id: str, *, timeout_s: float = 120.0) -> dict[str, Any]:
        """Consolidate one scope now (whatever the threshold); returns the run's report. Raises
        InvalidInput (a bad id or timeout: nothing queued), PoolUnavailable."""
        user = check_scope_id(user_id, field="user_id")
        report: dict[str, Any] = self._call("hivemem.consolidate", [zone.value, user], timeout_s)
        return report

    def close(self) -> None:
        self._app.close()

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
