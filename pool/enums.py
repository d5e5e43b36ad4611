"""The vocabularies of a memory record: level, tier and category (closed enums) and the trust
zone (an ordered ladder that configuration may extend, see :class:`Zone`).

Values are lower-case strings: they are what lands in payloads, JSON and the CLI.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from enum import StrEnum
from typing import ClassVar

from pydantic import GetCoreSchemaHandler
from pydantic_core import core_schema

from hivemem.pool.errors import InvalidInput
from hivemem.pool.ids import check_vocabulary_name


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


class _Ladder(type):
    """Zone's metaclass: iterating ``Zone`` yields the configured zones, lowest first, as
    iterating an enum class yields its members."""

    def __iter__(cls) -> Iterator[Zone]:
        return iter(_ladder.zones)

    def __len__(cls) -> int:
        return len(_ladder.zones)


class Zone(str, metaclass=_Ladder):
    """A trust zone: a name on the configured ladder, totally ordered by its place there.

    The default ladder is PUBLIC < INTERNAL < CONFIDENTIAL < SECRET. An operator may configure
    more zones (``HivememSettings.zones``, see :func:`configure_zones`): the four built-in ones
    stay, in that order, and others go anywhere between, below or above them. Comparison
    operators follow the ladder (not the alphabetical order of the names), so
    ``record.zone <= agent.clearance`` reads as "the agent may read it". ``Zone("name")`` raises
    ValueError for a name that is not on the ladder; a zone is its name (a ``str``), which is
    what lands in payloads, JSON, Redis keys and the CLI.
    """

    __slots__ = ()

    PUBLIC: ClassVar[Zone]
    INTERNAL: ClassVar[Zone]
    CONFIDENTIAL: ClassVar[Zone]
    SECRET: ClassVar[Zone]

    def __new__(cls, value: object) -> Zone:
        zone = named_zone(value)
        if zone is None:
            raise ValueError(f"{str(value)[:40]!r} is not a configured zone")
        return zone

    @classmethod
    def _make(cls, name: str) -> Zone:
        return str.__new__(cls, name)

    @property
    def value(self) -> str:
        """The zone's name as a plain ``str``."""
        return str.__str__(self)

    @property
    def rank(self) -> int:
        """The zone's place on the ladder (PUBLIC = 0). Raises InvalidInput for a zone the
        ladder no longer holds (only after :func:`configure_zones` replaced it)."""
        rank = _ladder.ranks.get(self)
        if rank is None:
            raise InvalidInput(f"zone {self.value!r} is not on the ladder", field="zone")
        return rank

    def __repr__(self) -> str:
        return f"Zone({self.value!r})"

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

    @classmethod
    def highest(cls, zones: Iterable[Zone]) -> Zone:
        """The most restrictive of ``zones`` (PUBLIC when there are none): the zone of anything
        derived from them ("no write down")."""
        return max(zones, default=cls.PUBLIC, key=lambda zone: zone.rank)

    @classmethod
    def top(cls) -> Zone:
        """The highest zone of the ladder: the clearance that reads everything."""
        return _ladder.zones[-1]

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: object, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(
            checked_zone,  # its InvalidInput is a ValueError: pydantic reports it
            json_schema_input_schema=core_schema.str_schema(),
            serialization=core_schema.plain_serializer_function_ser_schema(
                str.__str__, when_used="json-unless-none"
            ),
        )


#: The built-in zones, lowest first; every ladder holds them in this order.
BUILTIN_ZONES = ("public", "internal", "confidential", "secret")

Zone.PUBLIC, Zone.INTERNAL, Zone.CONFIDENTIAL, Zone.SECRET = (
    Zone._make(name) for name in BUILTIN_ZONES
)


class _ZoneLadder:
    """The configured zones, lowest first, with their ranks (one per process)."""

    def __init__(self, zones: tuple[Zone, ...]) -> None:
        self.install(zones)

    def install(self, zones: tuple[Zone, ...]) -> None:
        self.zones = zones
        self.by_name: dict[str, Zone] = {zone.value: zone for zone in zones}
        self.ranks: dict[str, int] = {zone.value: i for i, zone in enumerate(zones)}


_ladder = _ZoneLadder((Zone.PUBLIC, Zone.INTERNAL, Zone.CONFIDENTIAL, Zone.SECRET))


def check_zone_names(names: Sequence[str]) -> tuple[str, ...]:
    """``names`` as a ladder, lowest first, or InvalidInput (field ``zones``) when a name is
    malformed or repeated, or when the built-in zones are missing or out of order."""
    ladder = tuple(check_vocabulary_name(name, kind="zone", field="zones") for name in names)
    if any(name.endswith("_archive") for name in ladder):  # a zone store's archive collection
        raise InvalidInput("a zone name may not end in _archive", field="zones")
    if len(set(ladder)) != len(ladder):
        raise InvalidInput("a zone is named twice", field="zones")
    if tuple(name for name in ladder if name in BUILTIN_ZONES) != BUILTIN_ZONES:
        raise InvalidInput(
            "the zones must hold public, internal, confidential and secret, in that order",
            field="zones",
        )
    return ladder


def configure_zones(names: Sequence[str]) -> tuple[Zone, ...]:
    """Make ``names`` (lowest first) this process's zone ladder and return it. Raises
    InvalidInput (and changes nothing) for a bad ladder (see :func:`check_zone_names`).

    The ladder is process-wide, like the enum it extends: ``HivememSettings`` installs its
    ``zones`` when it is built, and every process of a deployment must use the same ladder
    (the pool checks it against the one stored in Redis)."""
    ladder = check_zone_names(names)
    # Every ladder holds the built-in zones: reuse their objects (Zone.PUBLIC is Zone("public")).
    zones = tuple(_ladder.by_name.get(name) or Zone._make(name) for name in ladder)
    if zones != _ladder.zones:
        _ladder.install(zones)
    return zones


def zone_names() -> tuple[str, ...]:
    """The configured zones' names, lowest first."""
    return tuple(zone.value for zone in _ladder.zones)


def named_zone(value: object) -> Zone | None:
    """``value`` when it is a Zone, the zone it names when it is a zone's name, else None."""
    if isinstance(value, Zone):
        return value
    return _ladder.by_name.get(value) if isinstance(value, str) else None


def checked_zone(value: object) -> Zone:
    """``value`` as a Zone; raises InvalidInput (a ValueError) for anything that names none."""
    zone = named_zone(value)
    if zone is None:
        raise InvalidInput(f"unknown zone {str(value)[:40]!r}", field="zone")
    return zone
