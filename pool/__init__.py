"""The shared core: models, settings, the error tree, filters and ports.

The pool itself is :class:`hivemem.pool.shared.SharedMemoryPool` (imported from there: it pulls
in the agents' memory and its embedder, which this package's models do not need).
"""

from hivemem.pool.agent_info import AgentInfo
from hivemem.pool.enums import Category, Level, Tier, Zone
from hivemem.pool.errors import (
    AgentNotFound,
    ClearanceDenied,
    EmbeddingModelMissing,
    HivememError,
    InvalidContent,
    InvalidFilter,
    InvalidIdentifier,
    InvalidInput,
    InvalidMessage,
    InvalidSearchConfig,
    MemoryClosed,
    MemoryNotFound,
    PoolUnavailable,
    QueuesBusy,
    RegistrationConflict,
    StoreIncompatible,
    StoreLocked,
    SupersessionConflict,
)
from hivemem.pool.filters import And, Cond, MemoryFilter, Not, Or, TimeRange
from hivemem.pool.records import MemoryRecord, Scope, SparseVector, Tombstone
from hivemem.pool.settings import HivememSettings, PoolSettings

__all__ = [
    "AgentInfo",
    "AgentNotFound",
    "And",
    "Category",
    "ClearanceDenied",
    "Cond",
    "EmbeddingModelMissing",
    "HivememError",
    "HivememSettings",
    "InvalidContent",
    "InvalidFilter",
    "InvalidIdentifier",
    "InvalidInput",
    "InvalidMessage",
    "InvalidSearchConfig",
    "Level",
    "MemoryClosed",
    "MemoryFilter",
    "MemoryNotFound",
    "MemoryRecord",
    "Not",
    "Or",
    "PoolSettings",
    "PoolUnavailable",
    "QueuesBusy",
    "RegistrationConflict",
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
