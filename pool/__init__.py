"""The shared core: models, settings, the error tree, filters and ports."""

from hivemem.pool.enums import Category, Level, Tier, Zone
from hivemem.pool.errors import (
    EmbeddingModelMissing,
    HivememError,
    InvalidContent,
    InvalidFilter,
    InvalidIdentifier,
    InvalidInput,
    InvalidSearchConfig,
    MemoryClosed,
    MemoryNotFound,
    StoreIncompatible,
    StoreLocked,
    SupersessionConflict,
)
from hivemem.pool.filters import And, Cond, MemoryFilter, Not, Or, TimeRange
from hivemem.pool.records import MemoryRecord, Scope, SparseVector, Tombstone
from hivemem.pool.settings import HivememSettings

__all__ = [
    "And",
    "Category",
    "Cond",
    "EmbeddingModelMissing",
    "HivememError",
    "HivememSettings",
    "InvalidContent",
    "InvalidFilter",
    "InvalidIdentifier",
    "InvalidInput",
    "InvalidSearchConfig",
    "Level",
    "MemoryClosed",
    "MemoryFilter",
    "MemoryNotFound",
    "MemoryRecord",
    "Not",
    "Or",
    "Scope",
    "SparseVector",
    "StoreIncompatible",
    "StoreLocked",
    "SupersessionConflict",
    "Tier",
    "TimeRange",
    "Tombstone",
    "Zone",
]
