"""The closed vocabularies of a memory record: level, tier, category and trust zone.

Values are lower-case strings: they are what lands in payloads, JSON and the CLI.
"""

from __future__ import annotations

from enum import StrEnum

from hivemem.pool.errors import InvalidInput


class Level(StrEnum):
    """The H-MEM hierarchy, from raw to abstract. ``rank`` orders them (EPISODE = 0)."""

    EPISODE = "episode"
    TRACE = "trace"
    CATEGORY = "category"
    DOMAIN = "domain"

    @property
    def rank(self) -> int:
        return _LEVEL_RANK[self]


_LEVEL_RANK = {level: i for i, level in enumerate(Level)}


class Tier(StrEnum):
    """Temperature of a record, orthogonal to its level: how readily it is kept and surfaced."""

    WORKING = "working"
    SHORT_TERM = "short_term"
    LONG_TERM = "long_term"
    ARCHIVE = "archive"


class Category(StrEnum):
    """What kind of knowledge a record holds."""

    PREFERENCE = "preference"
    FACT = "fact"
    CONTEXT = "context"
    ENTITY = "entity"
    DECISION = "decision"
    INSIGHT = "insight"
    EVENT = "event"


class Zone(StrEnum):
    """Trust zones, totally ordered: PUBLIC < INTERNAL < CONFIDENTIAL < SECRET.

    Comparison operators follow that order (not the alphabetical order of the values), so
    ``record.zone <= agent.clearance`` reads as "the agent may read it".
    """

    PUBLIC = "public"
    INTERNAL = "internal"
    CONFIDENTIAL = "confidential"
    SECRET = "secret"  # noqa: S105 - a zone name, not a password

    @property
    def rank(self) -> int:
        return _ZONE_RANK[self]

    @staticmethod
    def _coerce(other: object) -> Zone | None:
        """Another zone, or a string naming one (so that a clearance held as text compares by
        rank, never alphabetically); None for anything else."""
        if isinstance(other, Zone):
            return other
        if isinstance(other, str):
            return Zone(other)  # ValueError for a string that names no zone
        return None

    def __lt__(self, other: object) -> bool:
        zone = self._coerce(other)
        return NotImplemented if zone is None else self.rank < zone.rank

    def __le__(self, other: object) -> bool:
        zone = self._coerce(other)
        return NotImplemented if zone is None else self.rank <= zone.rank

    def __gt__(self, other: object) -> bool:
        zone = self._coerce(other)
        return NotImplemented if zone is None else self.rank > zone.rank

    def __ge__(self, other: object) -> bool:
        zone = self._coerce(other)
        return NotImplemented if zone is None else self.rank >= zone.rank

    __hash__ = StrEnum.__hash__

    @classmethod
    def highest(cls, zones: list[Zone]) -> Zone:
        """The most restrictive of ``zones`` (PUBLIC for an empty list): the zone of anything
        derived from them ("no write down")."""
        return max(zones, default=cls.PUBLIC, key=lambda zone: zone.rank)


_ZONE_RANK = {zone: i for i, zone in enumerate(Zone)}


def checked_zone(value: object) -> Zone:
    """``value`` as a Zone; raises InvalidInput (a ValueError) for anything that names none."""
    try:
        return Zone(str(value))
    except ValueError:
        raise InvalidInput(f"unknown zone {str(value)[:40]!r}", field="zone") from None
