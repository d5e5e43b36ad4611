"""What a caller gives to add a memory: :class:`MemoryInput` (everything but id and vectors)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from hivemem.pool.base import Model
from hivemem.pool.enums import Category, Level, Tier, Zone
from hivemem.pool.records import MetadataValue, Scope
from pydantic import Field


class MemoryInput(Model):
    """One memory to add. ``scope`` may be left out when the call gives a common scope; ``tier``
    left out means "decided by importance" (see :mod:`hivemem.agents.tiers`)."""

    content: str
    scope: Scope | None = None
    level: Level = Level.EPISODE
    category: Category = Category.FACT
    tier: Tier | None = None
    zone: Zone = Zone.PUBLIC
    importance: float = 0.5
    tags: list[str] = Field(default_factory=list)
    entities: list[str] = Field(default_factory=list)
    metadata: dict[str, MetadataValue] = Field(default_factory=dict)
    sources: list[str] = Field(default_factory=list)
    valid_from: datetime | None = None
    valid_until: datetime | None = None


def as_input(item: MemoryInput | dict[str, Any] | str) -> MemoryInput:
    """Accept an item of a batch as a MemoryInput, a dict of its fields, or bare content."""
    if isinstance(item, MemoryInput):
        return item
    if isinstance(item, str):
        return MemoryInput(content=item)
    return MemoryInput.model_validate(item)
