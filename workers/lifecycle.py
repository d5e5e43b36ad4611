"""The lifecycle pass: apply lifecycle policies (:mod:`hivemem.workers.policies`) to zones.

For each zone, the policies run in order. Each selects its records with one id query on its
collection (payloads are read only for the ``consolidated`` condition), leaves out the records
an earlier policy of the same pass acted on in that zone, and acts in batches: tier and access
changes are one engine call per batch (every record of a batch gets the same value), deletions
one call per batch, archival reads the records with their vectors.

A dry run selects exactly as the real run would and changes nothing: since a record is acted on
by one policy at most, what a later policy selects does not depend on whether the earlier ones
ran, so the dry run's report is the real run's (on the same data, with the same ``now``).

Archival and purging take each user's scope lock (:mod:`hivemem.workers.archive`); the records
of a user another worker holds (a forget, a consolidation) are left as they are, logged
(``archive_scope_busy``, ``purge_scope_busy``), for the next pass, though the report lists them.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import structlog
from pydantic import Field

from hivemem.pool.base import Model
from hivemem.pool.enums import Zone
from hivemem.pool.errors import InvalidInput, MemoryNotFound
from hivemem.pool.ports import ZoneStore
from hivemem.pool.records import Tombstone
from hivemem.workers.archive import ArchiveService, batches
from hivemem.workers.policies import Action, Policy, PolicySet, Store

log = structlog.get_logger(__name__)


class PolicyOutcome(Model):
    """What one policy did (or would do) in one zone: ``ids`` in id order."""

    policy: str
    zone: Zone
    action: Action
    store: Store
    ids: list[str] = Field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.ids)


class LifecycleReport(Model):
    """One pass: an outcome per zone and applicable policy, zones in the order given, then
    policies in order. Equal for a dry run and the real run on the same data."""

    now: datetime
    outcomes: list[PolicyOutcome] = Field(default_factory=list)

    def count(self, policy: str | None = None, zone: Zone | None = None) -> int:
        """Records acted on, for one policy and/or zone or overall."""
        return sum(
            o.count
            for o in self.outcomes
            if (policy is None or o.policy == policy) and (zone is None or o.zone == zone)
        )

    def ids(self, policy: str, zone: Zone) -> list[str]:
        """The ids ``policy`` acted on in ``zone`` (empty when it did not apply)."""
        return [i for o in self.outcomes if o.policy == policy and o.zone == zone for i in o.ids]


class LifecycleService:
    """Runs lifecycle passes over a :class:`ZoneStore`; ``batch`` bounds the records of one
    write (archival uses the ArchiveService's own batch)."""

    def __init__(self, store: ZoneStore, archive: ArchiveService, *, batch: int = 2000) -> None:
        if batch < 1:
            raise InvalidInput("batch must be at least 1", field="batch")
        self._store = store
        self._archive = archive
        self._batch = batch

    def run(
        self,
        zones: Sequence[Zone],
        policies: PolicySet | Sequence[Policy],
        *,
        now: datetime,
        dry_run: bool = False,
    ) -> LifecycleReport:
        """Apply ``policies`` in order to each of ``zones`` at ``now`` (a naive ``now`` is UTC);
        with ``dry_run``, change nothing and report what the run would do."""
        if isinstance(policies, PolicySet):
            policies = policies.policies
        now = now.replace(tzinfo=UTC) if now.tzinfo is None else now.astimezone(UTC)
        outcomes: list[PolicyOutcome] = []
        for zone in dict.fromkeys(Zone(z) for z in zones):
            acted: set[str] = set()
            for policy in policies:
                if not policy.applies_to(zone):
                    continue
                chosen = [i for i in self._select(zone, policy, now) if i not in acted]
                acted.update(chosen)
                if not dry_run:
                    self._apply(zone, policy, chosen, now)
                outcomes.append(
                    PolicyOutcome(
                        policy=policy.name,
                        zone=zone,
                        action=policy.action,
                        store=policy.when.store,
                        ids=chosen,
                    )
                )
                log.info(
                    "lifecycle_policy_applied",
                    zone=zone.value,
                    policy=policy.name,
                    action=policy.action.value,
                    count=len(chosen),
                    dry_run=dry_run,
                )
        return LifecycleReport(now=now, outcomes=outcomes)

    def _select(self, zone: Zone, policy: Policy, now: datetime) -> list[str]:
        """The ids ``policy`` selects in ``zone`` at ``now``, in id order."""
        where = policy.where(now)
        archived = policy.when.store == "archive"
        found = self._store.archive_ids(zone, where) if archived else self._store.ids(zone, where)
        wanted = policy.when.consolidated
        if wanted is None:
            return found
        kept: list[str] = []
        for chunk in batches(found, self._batch):
            records = (
                self._store.archive_get(zone, chunk) if archived else self._store.get(zone, chunk)
            )
            kept.extend(r.id for r in records if bool(r.consolidated_into) == wanted)
        return kept

    def _apply(self, zone: Zone, policy: Policy, ids: list[str], now: datetime) -> None:
        action = policy.action
        if action is Action.ARCHIVE:
            # A user another worker holds (a forget, a consolidation) is left for the next pass.
            self._archive.archive(zone, ids, skip_busy=True)
            return
        if action is Action.DELETE and policy.when.store == "archive":
            self._archive.purge(zone, ids, skip_busy=True)
            return
        if action is Action.REFRESH:
            change: dict[str, object] = {"last_accessed_at": now}
        else:  # demote, promote: one target tier for every record the policy selects
            change = {"tier": policy.target_tier()}
        for chunk in batches(ids, self._batch):
            if action is Action.DELETE:
                # Tombstones, not a removal: a copy of a record's message sent to the ingest
                # queue again must find it deleted, not store it anew.
                doomed = self._store.get(zone, chunk)
                self._store.put_tombstones(zone, [Tombstone.of(r, now) for r in doomed])
            else:
                self._update(zone, chunk, change)

    def _update(self, zone: Zone, ids: Sequence[str], change: dict[str, object]) -> None:
        """Give every live record among ``ids`` the same ``change``; records another task
        deleted since the selection are skipped."""
        try:
            self._store.update_fields(zone, dict.fromkeys(ids, change))
        except MemoryNotFound:
            live = [i for i, dead in self._store.presence(zone, ids).items() if not dead]
            self._store.update_fields(zone, dict.fromkeys(live, change))
