"""A zone's retention in an agent's own store: records older than the zone keeps them go.

:class:`LocalRetention` runs at each heartbeat of a pool agent (see
:mod:`hivemem.pool.zone_policy`): for every zone with ``retention_days``, the records of that
zone in the agent's memory recorded before the cutoff become tombstones, which travel like any
deletion. The workers apply the same retention to the zone store and its archive.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import structlog

from hivemem.agents.memory import HierarchicalMemory
from hivemem.pool.errors import HivememError, MemoryClosed
from hivemem.pool.records import utc_now
from hivemem.pool.zone_policy import ZonePolicies

log = structlog.get_logger(__name__)


class LocalRetention:
    """Deletes an agent's records past their zone's retention (see the module docstring)."""

    def __init__(
        self,
        memory: HierarchicalMemory,
        policies: ZonePolicies,
        *,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._memory = memory
        self._policies = policies
        self._clock = clock

    def run(self) -> int:
        """Expire what is due; returns how many records went. Failures are logged and tried
        again at the next call."""
        expired = 0
        for zone, cutoff in self._policies.cutoffs(self._clock()).items():
            try:
                expired += self._memory.expire(zone, cutoff)
            except MemoryClosed:
                raise
            except HivememError as error:
                log.warning("local_retention_failed", zone=zone.value, error=str(error)[:200])
        if expired:
            log.info("local_records_expired", records=expired)
        return expired
