"""Sensitive-content classification: the zone a record must have at least, given which
detectors (:mod:`hivemem.security.detectors`) fire on its text.

A :class:`SensitivityPolicy` says which detectors run and the minimum zone each one imposes; a
:class:`Classifier` applies it. :meth:`Classifier.assess` returns an :class:`Assessment`: the
highest of the asked zone and the minimum of each detector that fired (a zone is only ever
raised, never lowered), the sorted names of those detectors, and whether the zone was lifted.
:func:`record_text` is what the detectors read of a record.

Only detector names leave this module: matched text is never returned, logged nor put in an
error. The module logs nothing; the caller records the names on the record. It also re-exports
the detectors' :data:`DETECTORS`, :func:`detect` and :func:`luhn_valid`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, field_validator

from hivemem.pool.enums import Zone, checked_zone
from hivemem.pool.errors import InvalidInput
from hivemem.security.detectors import DETECTORS, detect, detect_among, luhn_valid

__all__ = [
    "DEFAULT_MIN_ZONE",
    "DETECTORS",
    "Assessment",
    "Classifier",
    "SensitivityPolicy",
    "detect",
    "luhn_valid",
    "record_text",
]


#: The minimum zone each detector imposes by default.
DEFAULT_MIN_ZONE: dict[str, Zone] = {
    "ssn": Zone.CONFIDENTIAL,
    "payment_card": Zone.CONFIDENTIAL,
    "private_key": Zone.SECRET,
    "api_token": Zone.SECRET,
    "email": Zone.INTERNAL,
    "phone": Zone.INTERNAL,
}


class SensitivityPolicy(BaseModel):
    """Which detectors run on written text, and the minimum zone each imposes when it fires.

    A detector absent from ``min_zone`` is not run; ``enabled=False`` runs none. Construction
    raises pydantic's ValidationError (a ValueError) for a ``min_zone`` key that names no
    detector (the message lists the known ones), or a value that names no zone.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = True
    min_zone: dict[str, Zone] = Field(default_factory=lambda: dict(DEFAULT_MIN_ZONE))

    @field_validator("min_zone")
    @classmethod
    def _check_detectors(cls, value: dict[str, Zone]) -> dict[str, Zone]:
        unknown = sorted(name[:40] for name in value if name not in DETECTORS)
        if unknown:
            raise InvalidInput(
                f"unknown detector(s) in min_zone: {', '.join(map(repr, unknown[:10]))}; "
                f"known detectors: {', '.join(DETECTORS)}",
                field="min_zone",
            )
        return value


def record_text(
    content: str, tags: Sequence[str], entities: Sequence[str], metadata: Mapping[str, object]
) -> str:
    """What the detectors read of a record: its content, and its tags, entities and metadata
    keys and values (numbers too: a card number may be given as one), each on a line of its
    own. They travel and are stored with the record, and only the content is sealed."""
    values: list[str] = [content, *tags, *entities, *metadata]
    for value in metadata.values():
        items = value if isinstance(value, list) else [value]
        values.extend(str(item) for item in items if not isinstance(item, bool | None))
    return "\n".join(values)


@dataclass(frozen=True, slots=True)
class Assessment:
    """What the classifier concluded about one text: ``zone``, the zone the record must have at
    least; ``detectors``, the sorted names of the policy's detectors that fired; ``lifted``,
    whether ``zone`` is above the zone asked for. Holds none of the text."""

    zone: Zone
    detectors: list[str]
    lifted: bool


class Classifier:
    """Applies a :class:`SensitivityPolicy` (the default one when None) to texts. Reads the
    policy once, here, and holds no other state: it may be shared between threads."""

    __slots__ = ("_min_zone", "_names", "_policy")

    def __init__(self, policy: SensitivityPolicy | None = None) -> None:
        self._policy = SensitivityPolicy() if policy is None else policy
        run = self._policy.min_zone if self._policy.enabled else {}
        self._names = tuple(name for name in DETECTORS if name in run)
        self._min_zone = {name: Zone(run[name]) for name in self._names}

    @property
    def policy(self) -> SensitivityPolicy:
        return self._policy

    def assess(self, text: str, zone: Zone) -> Assessment:
        """The zone a record holding ``text`` must have when its writer asks for ``zone``.
        Raises InvalidInput when ``text`` is not a string or ``zone`` names no zone."""
        asked = checked_zone(zone)
        if not isinstance(text, str):
            raise InvalidInput("text must be a string", field="text")
        if not self._names:
            return Assessment(asked, [], lifted=False)
        fired = detect_among(text, self._names)
        needed = Zone.highest([asked, *(self._min_zone[name] for name in fired)])
        return Assessment(needed, fired, lifted=needed > asked)

    def assess_many(self, texts: Sequence[str], zones: Sequence[Zone]) -> list[Assessment]:
        """:meth:`assess` of each (text, zone) pair, in order. Raises InvalidInput, before
        assessing any, when the lengths differ, a zone names no zone or a text is no string."""
        if len(texts) != len(zones):
            raise InvalidInput(
                f"{len(texts)} texts but {len(zones)} zones: one zone per text", field="zones"
            )
        asked = [checked_zone(zone) for zone in zones]
        if not all(isinstance(text, str) for text in texts):
            raise InvalidInput("every text must be a string", field="texts")
        return [self.assess(text, zone) for text, zone in zip(texts, asked, strict=True)]
