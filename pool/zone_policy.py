"""What each trust zone allows: which levels travel between agents, how long records are kept,
and what clearance it takes to write there.

Configured per zone (``HIVEMEM_ZONE_POLICIES='{"secret": {"share_levels": ["domain"],
"retention_days": 30, "min_write_clearance": "secret"}}'``); a zone without an entry allows
what it always did: every level shared, kept until deleted, written by anyone cleared for it.
Who applies what:

- ``share_levels``: the sending agent shares only those levels of the zone (whatever its own
  share levels), receivers drop other levels of the zone, and a hand-over of another level is
  refused (PolicyDenied). The workers' ingest queues are not sharing: they get every level.
- ``retention_days``: records of the zone recorded longer ago are deleted by the workers'
  lifecycle pass (zone store and archive) and by each pool agent at its heartbeat (its local
  store; the deletions travel as tombstones).
- ``min_write_clearance``: a pool agent below it cannot create or supersede records of the zone
  (PolicyDenied, nothing written), and receivers reject records of the zone from such a sender.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta

from pydantic import BaseModel, ConfigDict, Field

from hivemem.pool.enums import Level, Zone
from hivemem.pool.errors import PolicyDenied

#: The most days ``retention_days`` may say (~274 years).
MAX_RETENTION_DAYS = 100_000


class ZonePolicy(BaseModel):
    """The rules of one zone (see the module docstring); None: no restriction."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: Levels of this zone that may travel between agents.
    share_levels: list[Level] | None = None
    #: Days a record of this zone is kept after ``recorded_at``.
    retention_days: float | None = Field(default=None, gt=0, le=MAX_RETENTION_DAYS)
    #: The clearance it takes to write in this zone (at least the zone itself).
    min_write_clearance: Zone | None = None


class ZonePolicies:
    """The policies of every zone, asked by the agents, the pool and the workers."""

    def __init__(self, policies: Mapping[Zone, ZonePolicy] | None = None) -> None:
        self._policies = dict(policies or {})

    def of(self, zone: Zone) -> ZonePolicy:
        return self._policies.get(zone) or _OPEN

    def may_share(self, zone: Zone, level: Level) -> bool:
        allowed = self.of(zone).share_levels
        return allowed is None or level in allowed

    def write_floor(self, zone: Zone) -> Zone:
        """The clearance it takes to write in ``zone``."""
        floor = self.of(zone).min_write_clearance
        return zone if floor is None else max(zone, floor)

    def check_write(self, zone: Zone, agent_id: str, clearance: Zone) -> None:
        """Raise PolicyDenied unless an agent of ``clearance`` may write in ``zone``."""
        floor = self.write_floor(zone)
        if clearance < floor:
            raise PolicyDenied(
                f"agent {agent_id} (clearance {clearance.value}) may not write {zone.value} "
                f"records: the zone takes clearance {floor.value}",
                field="zone",
            )

    def check_share(self, zone: Zone, level: Level) -> None:
        """Raise PolicyDenied unless records of ``level`` in ``zone`` may travel."""
        if not self.may_share(zone, level):
            raise PolicyDenied(
                f"{level.value} records of {zone.value} may not be shared (zone policy)",
                field="level",
            )

    def cutoffs(self, now: datetime) -> dict[Zone, datetime]:
        """For each zone with a retention, the time before which its records are past it."""
        return {
            zone: now - timedelta(days=policy.retention_days)
            for zone, policy in self._policies.items()
            if policy.retention_days is not None
        }


_OPEN = ZonePolicy()


def check_policies(policies: dict[Zone, ZonePolicy]) -> dict[Zone, ZonePolicy]:
    """``policies`` if every write floor is at least its zone; else ValueError naming it (the
    settings validator: a bad configuration fails when the settings are built)."""
    for zone, policy in policies.items():
        floor = policy.min_write_clearance
        if floor is not None and floor < zone:
            raise ValueError(
                f"zone {zone.value}: min_write_clearance {floor.value} is below the zone "
                "(nobody below a zone's clearance writes in it)"
            )
    return policies
