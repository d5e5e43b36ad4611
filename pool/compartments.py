"""Compartments: need-to-know tags a record may carry and an agent must hold, on top of its zone.

An operator configures the compartments a deployment knows (``HivememSettings.compartments``,
installed here by :func:`configure_compartments` when the settings are built, like the zone
ladder). A record carries a set of them (``MemoryRecord.compartments``, none by default); an
agent holds a set (``AgentInfo.compartments``). The agent may read the record only when its
clearance reaches the record's zone **and** it holds every compartment the record carries. A
record derived from others carries the union of their compartments ("no write down").

A set of compartments is kept in canonical form: a tuple in configured order, no repeats. For
the broker, a set is also a *mask*: one character per configured compartment, ``1`` where the
set holds it and ``0`` elsewhere. The pool routes a record with compartments ``C`` in zone ``z``
on the topic ``comp:<z>:<mask of C>``; an agent holding ``A`` may use exactly the topics whose
mask matches :func:`mask_pattern` of ``A`` (``[01]`` where ``A`` holds the compartment, ``0``
elsewhere): the subsets of ``A``. One glob per zone says it, in Redis ACL rules and in
``PSUBSCRIBE``, however many compartments there are.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from hivemem.pool.errors import InvalidInput
from hivemem.pool.ids import check_vocabulary_name

#: The most compartments a deployment may configure (one mask character each).
MAX_COMPARTMENTS = 64


class _Configured:
    """The configured compartments, in order, with their places (one per process)."""

    def __init__(self) -> None:
        self.install(())

    def install(self, names: tuple[str, ...]) -> None:
        self.names = names
        self.places: dict[str, int] = {name: i for i, name in enumerate(names)}


_configured = _Configured()


def check_compartment_names(names: Sequence[str]) -> tuple[str, ...]:
    """``names`` as a deployment's compartments, or InvalidInput (field ``compartments``) for a
    malformed or repeated name, or more than :data:`MAX_COMPARTMENTS`."""
    chosen = tuple(
        check_vocabulary_name(name, kind="compartment", field="compartments") for name in names
    )
    if len(set(chosen)) != len(chosen):
        raise InvalidInput("a compartment is named twice", field="compartments")
    if len(chosen) > MAX_COMPARTMENTS:
        raise InvalidInput(
            f"{len(chosen)} compartments configured, more than {MAX_COMPARTMENTS}",
            field="compartments",
        )
    return chosen


def configure_compartments(names: Sequence[str]) -> tuple[str, ...]:
    """Make ``names`` this process's compartments and return them. Raises InvalidInput (and
    changes nothing) for bad names. Process-wide, like the zone ladder: every process of a
    deployment must configure the same compartments in the same order (the pool checks)."""
    chosen = check_compartment_names(names)
    if chosen != _configured.names:
        _configured.install(chosen)
    return chosen


def compartment_names() -> tuple[str, ...]:
    """The configured compartments, in order."""
    return _configured.names


def checked_compartments(
    values: Iterable[object], *, field: str = "compartments"
) -> tuple[str, ...]:
    """``values`` as a canonical set (configured order, no repeats); raises InvalidInput for a
    value that names no configured compartment. A ``str`` is refused (a set was meant)."""
    if isinstance(values, str | bytes):
        raise InvalidInput(f"{field} must be a list of compartment names", field=field)
    places = _configured.places
    chosen: set[str] = set()
    for value in values:
        if not isinstance(value, str) or value not in places:
            raise InvalidInput(f"unknown compartment {str(value)[:40]!r}", field=field)
        chosen.add(value)
    return tuple(sorted(chosen, key=places.__getitem__))


def union(sets: Iterable[Iterable[str]]) -> tuple[str, ...]:
    """The union of compartment sets, canonical: what a record derived from them carries."""
    return checked_compartments({name for chosen in sets for name in chosen})


def missing(held: Iterable[str], needed: Iterable[str]) -> list[str]:
    """The compartments of ``needed`` that ``held`` lacks, in ``needed``'s order: empty when
    whoever holds ``held`` may read what carries ``needed``."""
    have = set(held)
    return [name for name in needed if name not in have]


def mask(compartments: Iterable[str]) -> str:
    """The set as a mask: one character per configured compartment, ``1`` where it is held."""
    chosen = set(checked_compartments(compartments))
    return "".join("1" if name in chosen else "0" for name in _configured.names)


def mask_pattern(held: Iterable[str]) -> str:
    """The glob that matches the mask of every subset of ``held`` (and nothing else)."""
    chosen = set(checked_compartments(held))
    return "".join("[01]" if name in chosen else "0" for name in _configured.names)


def from_mask(text: str) -> tuple[str, ...] | None:
    """The set a mask stands for; None when ``text`` is no mask of the configured compartments."""
    names = _configured.names
    if len(text) != len(names) or set(text) - {"0", "1"}:
        return None
    return tuple(name for name, bit in zip(names, text, strict=True) if bit == "1")
