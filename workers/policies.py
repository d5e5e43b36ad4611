"""Lifecycle policies as data: which records, in which collection, get which action.

A :class:`Policy` is a name, a :class:`When` (conditions, all of which must hold) and an
:class:`Action`. Policies come from code, from the presets here (:data:`DEFAULT_POLICIES`,
:func:`cleanup_old_episodes`) or from a YAML or TOML file (:func:`load_policies`, the
``HIVEMEM_WORKERS__POLICIES_FILE`` setting); :mod:`hivemem.workers.lifecycle` runs them.

Actions:

- ``archive``: move live records to the zone's archive (tier ARCHIVE). Live store only.
- ``delete``: physically remove live records, or purge archived ones (``store: archive``).
- ``refresh``: set ``last_accessed_at`` to the pass's ``now``, so that an important memory does
  not age out. Live store only.
- ``demote``: one tier colder along :data:`hivemem.agents.tiers.COLDER`, but never to ARCHIVE
  (only ``archive`` reaches it): WORKING → SHORT_TERM. Records whose colder tier is ARCHIVE
  (SHORT_TERM, LONG_TERM) are not selected. Live store only.
- ``promote``: to LONG_TERM, the tier that keeps a record, from WORKING or SHORT_TERM (as the
  agents' tier manager promotes); never out of ARCHIVE (that is a restore). Live store only.

Times: ``older_than_days`` is the age from ``recorded_at``; ``unaccessed_days`` selects records
last accessed before the cutoff, or never accessed and recorded before it. Days are finite, at
least 0 and at most :data:`MAX_DAYS`; importances are in [0, 1].

A policy that makes no sense raises :class:`InvalidPolicy` when built (nothing runs): an action
its store does not allow, an empty importance range, tiers its action never moves, or no
condition at all (an unconditional ``delete`` would wipe a zone; say ``older_than_days: 0`` to
mean it).
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal, Self

import structlog
import yaml
from pydantic import Field, field_validator, model_validator

from hivemem.pool.base import Model
from hivemem.pool.enums import Category, Level, Tier, Zone
from hivemem.pool.errors import InvalidInput
from hivemem.pool.filters import And, Cond, Expr, Or
from hivemem.pool.settings import WorkerSettings
from hivemem.pool.zone_policy import ZonePolicy

log = structlog.get_logger(__name__)

#: The most days a condition may name (~274 years: ``now`` minus it stays a valid datetime).
MAX_DAYS = 100_000
Store = Literal["live", "archive"]


class InvalidPolicy(InvalidInput):
    """Raised when a policy or policy set makes no sense (see the module docstring); nothing
    ran. ``field`` names the offending field."""


class InvalidPolicyFile(InvalidPolicy):
    """Raised by :func:`load_policies` for a file that cannot be read, is not valid YAML or
    TOML, or holds an invalid policy set. ``path`` is the file; the message names it."""

    def __init__(self, path: Path, message: str, *, field: str | None = None) -> None:
        super().__init__(f"{path}: {message}", field=field)
        self.path = path


class Action(StrEnum):
    """What a policy does to the records it selects (see the module docstring)."""

    ARCHIVE = "archive"
    DELETE = "delete"
    REFRESH = "refresh"
    DEMOTE = "demote"
    PROMOTE = "promote"


#: The tiers each tier-changing action moves, and where to.
DEMOTED = {Tier.WORKING: Tier.SHORT_TERM}
PROMOTED = {Tier.WORKING: Tier.LONG_TERM, Tier.SHORT_TERM: Tier.LONG_TERM}
_LIVE_ONLY = frozenset({Action.ARCHIVE, Action.REFRESH, Action.DEMOTE, Action.PROMOTE})

Days = Annotated[float, Field(strict=True, ge=0, le=MAX_DAYS, allow_inf_nan=False)]
Fraction = Annotated[float, Field(strict=True, ge=0.0, le=1.0, allow_inf_nan=False)]
PolicyName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]


class _PolicyModel(Model):
    error = InvalidPolicy


def _nested(model: type[_PolicyModel], value: object, at: str) -> object:
    """``value`` validated as ``model``, errors naming their field from the outer model down
    (``policies.1.when.older_than_days``), which pydantic loses for nested models."""
    if isinstance(value, model):
        return value
    try:
        return model.model_validate(value)
    except InvalidInput as error:
        inner = error.field
        field = f"{at}.{inner}" if inner else at
        message = str(error).removeprefix(f"{inner}: ") if inner else str(error)
        raise InvalidPolicy(f"{field}: {message}", field=field) from None


class When(_PolicyModel):
    """Conditions on records, all of which must hold (unset ones are ignored)."""

    older_than_days: Days | None = None
    unaccessed_days: Days | None = None
    importance_below: Fraction | None = None
    importance_at_least: Fraction | None = None
    importance_above: Fraction | None = None
    levels: Annotated[list[Level], Field(min_length=1)] | None = None
    tiers: Annotated[list[Tier], Field(min_length=1)] | None = None
    zones: Annotated[list[Zone], Field(min_length=1)] | None = None
    categories: Annotated[list[Category], Field(min_length=1)] | None = None
    #: True: only records consolidated into a higher level (``consolidated_into`` non-empty);
    #: False: only records not consolidated. Not filterable: checked on the fetched records.
    consolidated: bool | None = None
    #: The collection the policy applies to.
    store: Store = "live"

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        high = self.importance_below
        for name in ("importance_at_least", "importance_above"):
            low = getattr(self, name)
            if low is not None and high is not None and low >= high:
                raise InvalidPolicy(f"{name} must be below importance_below", field=name)
        return self

    @property
    def is_empty(self) -> bool:
        """True when no condition is set (``store`` is not a condition)."""
        return not self.model_dump(exclude_none=True, exclude={"store"})


def _cutoff(now: datetime, days: float) -> datetime:
    return now - timedelta(days=days)


class Policy(_PolicyModel):
    """One rule: records of ``when.store`` that satisfy ``when`` get ``action``."""

    name: PolicyName
    when: When
    action: Action

    @field_validator("when", mode="before")
    @classmethod
    def _when(cls, value: object) -> object:
        return _nested(When, value, "when")

    @model_validator(mode="after")
    def _sensible(self) -> Self:
        if self.when.is_empty:
            raise InvalidPolicy(f"policy {self.name} has no condition", field="when")
        if self.when.store == "archive" and self.action in _LIVE_ONLY:
            raise InvalidPolicy(
                f"policy {self.name}: {self.action} applies to live records only", field="action"
            )
        moved = self.moved_tiers()
        if moved is not None and not moved:
            raise InvalidPolicy(
                f"policy {self.name}: {self.action} never moves the tiers it selects",
                field="when.tiers",
            )
        return self

    def moved_tiers(self) -> list[Tier] | None:
        """For demote and promote, the selected tiers the action moves; None for others."""
        table = {Action.DEMOTE: DEMOTED, Action.PROMOTE: PROMOTED}.get(self.action)
        if table is None:
            return None
        return [t for t in self.when.tiers or list(Tier) if t in table]

    def target_tier(self) -> Tier | None:
        """The tier demote or promote sets (one for every record it selects); None otherwise."""
        moved = self.moved_tiers()
        table = DEMOTED if self.action is Action.DEMOTE else PROMOTED
        return table[moved[0]] if moved else None

    def applies_to(self, zone: Zone) -> bool:
        return self.when.zones is None or zone in self.when.zones

    def where(self, now: datetime) -> And:
        """The filter selecting this policy's records at ``now`` (a naive ``now`` is UTC).
        ``consolidated`` is not in it: the caller checks it on the records."""
        now = now.replace(tzinfo=UTC) if now.tzinfo is None else now.astimezone(UTC)
        when = self.when
        parts: list[Expr] = []
        for field, chosen in (
            ("level", when.levels),
            ("category", when.categories),
            ("zone", when.zones),
            ("tier", self.moved_tiers() or when.tiers),
        ):
            if chosen is not None:
                parts.append(Cond(field=field, op="in", value=list(chosen)))
        if when.importance_below is not None:
            parts.append(Cond(field="importance", op="lt", value=when.importance_below))
        if when.importance_at_least is not None:
            parts.append(Cond(field="importance", op="gte", value=when.importance_at_least))
        if when.importance_above is not None:
            parts.append(Cond(field="importance", op="gt", value=when.importance_above))
        if when.older_than_days is not None:
            cutoff = _cutoff(now, when.older_than_days)
            parts.append(Cond(field="recorded_at", op="lt", value=cutoff))
        if when.unaccessed_days is not None:
            cutoff = _cutoff(now, when.unaccessed_days)
            never = And(
                all=[
                    Cond(field="last_accessed_at", op="eq", value=None),
                    Cond(field="recorded_at", op="lt", value=cutoff),
                ]
            )
            parts.append(Or(any=[Cond(field="last_accessed_at", op="lt", value=cutoff), never]))
        return And(all=parts)


class PolicySet(_PolicyModel):
    """Policies applied in order; names are unique (reports refer to policies by name)."""

    policies: list[Policy]

    @field_validator("policies", mode="before")
    @classmethod
    def _each(cls, value: object) -> object:
        if not isinstance(value, list):
            return value
        return [_nested(Policy, item, f"policies.{i}") for i, item in enumerate(value)]

    @model_validator(mode="after")
    def _unique(self) -> Self:
        names = [p.name for p in self.policies]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise InvalidPolicy(f"policy name {name} is used twice", field=f"policies.{i}")
        return self


def cleanup_old_episodes(days: int) -> Policy:
    """Delete live EPISODE records recorded more than ``days`` ago that have been consolidated
    (their ``consolidated_into`` is non-empty): their content lives on in the traces."""
    return Policy(
        name="cleanup_old_episodes",
        when=When(older_than_days=days, levels=[Level.EPISODE], consolidated=True),
        action=Action.DELETE,
    )


#: Archive what nobody read for 30 days and matters little; delete archived records recorded
#: more than 365 days ago; keep important memories (0.8 or more) fresh when unread for 7 days.
DEFAULT_POLICIES = PolicySet(
    policies=[
        Policy(
            name="archive_unaccessed",
            # Not categories and profiles: a run supersedes or retires the live ones only, so
            # an archived one would stay current beside its successor at the agents.
            when=When(
                unaccessed_days=30, importance_below=0.3, levels=[Level.EPISODE, Level.TRACE]
            ),
            action=Action.ARCHIVE,
        ),
        Policy(
            name="delete_old_archives",
            when=When(older_than_days=365, store="archive"),
            action=Action.DELETE,
        ),
        Policy(
            name="refresh_important",
            when=When(unaccessed_days=7, importance_above=0.8),
            action=Action.REFRESH,
        ),
    ]
)


def _parse(path: Path, text: str) -> Any:
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise InvalidPolicyFile(path, f"not valid YAML: {error}") from None
    if suffix == ".toml":
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            raise InvalidPolicyFile(path, f"not valid TOML: {error}") from None
    raise InvalidPolicyFile(path, "a policy file ends in .yaml, .yml or .toml")


def load_policies(path: Path | str) -> PolicySet:
    """The policy set in a YAML (``.yaml``/``.yml``) or TOML (``.toml``) file: a mapping whose
    ``policies`` is a list of policies. Raises InvalidPolicyFile (naming the file) for anything
    else."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise InvalidPolicyFile(path, f"cannot be read: {error}") from None
    data = _parse(path, text)
    if not isinstance(data, dict):
        raise InvalidPolicyFile(path, "expected a mapping with a 'policies' list")
    try:
        return PolicySet.model_validate(data)
    except InvalidInput as error:
        raise InvalidPolicyFile(path, str(error), field=error.field) from None


def retention_policies(zones: Mapping[Zone, ZonePolicy]) -> list[Policy]:
    """For each zone with ``retention_days`` (:mod:`hivemem.pool.zone_policy`), the policies
    that delete its live and archived records recorded longer ago."""
    stores: tuple[Store, ...] = ("live", "archive")
    return [
        Policy(
            name=f"retention.{zone.value}.{store}",
            when=When(older_than_days=policy.retention_days, zones=[zone], store=store),
            action=Action.DELETE,
        )
        for zone, policy in zones.items()
        if policy.retention_days is not None
        for store in stores
    ]


def configured_policies(
    settings: WorkerSettings,
    zones: Mapping[Zone, ZonePolicy] | None = None,
    *,
    strict: bool = False,
) -> PolicySet:
    """The policies the workers run: the zones' retention first (``zones``: the settings'
    ``zone_policies``), then ``settings.policies_file``, else :data:`DEFAULT_POLICIES`.

    A file that cannot be used (unreadable, not YAML or TOML, an invalid policy, a policy
    taking a retention policy's name) never switches the zones' retention off: with ``strict``
    it raises InvalidPolicyFile naming the file and the field (the workers check so at start);
    otherwise the error is logged (``lifecycle_policies_file_invalid``) and the retention
    policies run alone, without the file's policies or the defaults."""
    retention = retention_policies(zones or {})
    path = settings.policies_file
    if path is None:
        chosen = DEFAULT_POLICIES
    else:
        try:
            chosen = _file_policies(path, retention)
        except InvalidPolicyFile as error:
            if strict:
                raise
            log.error(
                "lifecycle_policies_file_invalid",
                path=str(error.path),
                field=error.field,
                error=str(error),
                running=[p.name for p in retention],
            )
            return PolicySet(policies=retention)
    if not retention:
        return chosen
    return PolicySet(policies=[*retention, *chosen.policies])


def _file_policies(path: Path, retention: list[Policy]) -> PolicySet:
    """The policies of the file at ``path``, checked against the ``retention`` policies that
    run before them. Raises InvalidPolicyFile."""
    chosen = load_policies(path)
    taken = {p.name for p in retention}
    for i, policy in enumerate(chosen.policies):
        if policy.name in taken:
            raise InvalidPolicyFile(
                path,
                f"policies.{i}: policy name {policy.name} is a zone retention policy's",
                field=f"policies.{i}.name",
            )
    return chosen
