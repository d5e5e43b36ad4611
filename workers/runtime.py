"""What the tasks of one worker process use, built on first use and once per process.

Celery's prefork pool forks its children from the worker's main process: nothing here is built
in the parent (a Redis connection or an open Edge shard must not cross a fork), and
:meth:`WorkerRuntime.reset` drops anything that did. A worker checks at start the settings that
would otherwise fail only at a task (:meth:`WorkerRuntime.check`); a client (``Fleet``) does
not, so that a strategy plugin installed on the workers' machines only is no error there.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Sequence
from functools import cached_property

import redis

from hivemem.agents.embedding import MINILM_DIM
from hivemem.pool.adapters.edge_zone_store import EdgeZoneStore
from hivemem.pool.adapters.qdrant_zone_store import QdrantZoneStore
from hivemem.pool.adapters.redis_bus import Delivery, RedisBus
from hivemem.pool.adapters.redis_errors import redis_client
from hivemem.pool.adapters.redis_registry import AgentRegistry, check_zone_ladder
from hivemem.pool.agent_info import AgentInfo
from hivemem.pool.enums import Zone
from hivemem.pool.envelope import EnvelopeCodec, PlainCodec
from hivemem.pool.errors import InvalidInput, MessageRejected
from hivemem.pool.ports import ResealableZoneStore, ZoneStore
from hivemem.pool.records import MemoryRecord
from hivemem.pool.registration import register_audited
from hivemem.pool.settings import ConsolidationSettings, HivememSettings
from hivemem.security.audit import AuditLog
from hivemem.security.audit_entry import AuditEvent
from hivemem.security.key_rotation import KeyRotation
from hivemem.security.pool_security import WORKER_SENDER, PoolSecurity
from hivemem.security.zone_store import SecureZoneStore
from hivemem.workers.archive import ArchiveService
from hivemem.workers.consolidation import ConsolidationService
from hivemem.workers.forget import ForgetService
from hivemem.workers.ingest import IngestService
from hivemem.workers.keys import WorkerKeys, add_pending
from hivemem.workers.lifecycle import LifecycleService
from hivemem.workers.llm import LlmStrategy
from hivemem.workers.offline import OfflineStrategy
from hivemem.workers.policies import configured_policies
from hivemem.workers.reseal import ResealService
from hivemem.workers.strategy import ConsolidationStrategy


def open_zone_store(settings: HivememSettings) -> ResealableZoneStore:
    """The Qdrant server of ``qdrant_url``, else the embedded store under ``<data_dir>/zones``."""
    namespace = settings.pool.namespace
    if settings.qdrant_url is not None:
        key = settings.qdrant_api_key.get_secret_value() if settings.qdrant_api_key else None
        return QdrantZoneStore.from_url(
            settings.qdrant_url, dim=MINILM_DIM, api_key=key, namespace=namespace
        )
    return EdgeZoneStore(
        settings.data_dir / "zones",
        dim=MINILM_DIM,
        namespace=namespace,
        idle_close_s=settings.workers.store_idle_close_s,
        open_timeout_s=settings.workers.store_open_timeout_s,
    )


_STRATEGY_FIELD = "workers.consolidation.strategy"
#: What a strategy must have (see :class:`~hivemem.workers.strategy.ConsolidationStrategy`).
_STRATEGY_METHODS = ("traces", "categories", "domain")


def make_strategy(settings: ConsolidationSettings) -> ConsolidationStrategy:
    """The strategy the settings name: "offline", "llm", or ``module:Class`` (built with the
    settings). Raises InvalidInput (``field`` ``workers.consolidation.strategy``) for a name
    that does not import, a factory that is not callable or raises, or a result that is not a
    strategy: no non-empty str ``name`` or no callable ``traces``, ``categories``, ``domain``."""
    offline = OfflineStrategy(settings)
    if settings.strategy == "offline":
        return offline
    if settings.strategy == "llm":
        return LlmStrategy(settings.llm, offline)
    shown = repr(settings.strategy[:120])
    module_name, _, class_name = settings.strategy.partition(":")
    if not module_name or not class_name:
        raise InvalidInput(
            f"consolidation strategy {shown} is not offline, llm, or module:Class",
            field=_STRATEGY_FIELD,
        )
    # Isolation point: the module and its factory are user code, which may raise anything.
    try:
        factory = getattr(importlib.import_module(module_name), class_name)
    except Exception as error:
        raise InvalidInput(
            f"consolidation strategy {shown} is not offline, llm, or an importable "
            f"module:Class ({_described(error)})",
            field=_STRATEGY_FIELD,
        ) from error
    if not callable(factory):
        raise InvalidInput(
            f"consolidation strategy {shown} names a non-callable {type(factory).__name__}, "
            "not a class",
            field=_STRATEGY_FIELD,
        )
    try:
        strategy = factory(settings)
    except Exception as error:
        raise InvalidInput(
            f"consolidation strategy {shown} could not be built with the consolidation "
            f"settings ({_described(error)})",
            field=_STRATEGY_FIELD,
        ) from error
    _check_strategy(strategy, shown)
    checked: ConsolidationStrategy = strategy
    return checked


def _check_strategy(strategy: object, shown: str) -> None:
    """Raise InvalidInput unless ``strategy`` has a non-empty str ``name`` and the methods."""
    try:
        name = getattr(strategy, "name", None)
        missing = [m for m in _STRATEGY_METHODS if not callable(getattr(strategy, m, None))]
    except Exception as error:  # isolation point: a property of user code
        raise InvalidInput(
            f"consolidation strategy {shown} built an object whose attributes fail "
            f"({_described(error)})",
            field=_STRATEGY_FIELD,
        ) from error
    if not (isinstance(name, str) and name):
        missing.insert(0, "name (a non-empty str)")
    if missing:
        raise InvalidInput(
            f"consolidation strategy {shown} built a {type(strategy).__name__}, which is not "
            f"a ConsolidationStrategy: it lacks {', '.join(missing)}",
            field=_STRATEGY_FIELD,
        )


def _described(error: BaseException) -> str:
    """``Type: message`` of ``error``, cut to 200 characters. Only for errors of building a
    strategy from the settings: no memory content can be in their message."""
    text = f"{type(error).__name__}: {error}"
    return text if len(text) <= 200 else f"{text[:199]}…"


class WorkerRuntime:
    """The services of one worker process (see the module docstring)."""

    def __init__(self, settings: HivememSettings) -> None:
        self.settings = settings
        self._lock = threading.Lock()

    def check(self) -> None:
        """Build the consolidation strategy and the lifecycle policies once, without keeping
        them (nothing here may cross a fork). Raises InvalidInput for a strategy that does not
        build (see :func:`make_strategy`), InvalidPolicyFile (naming the file and the field)
        for a policies file the lifecycle pass could not use."""
        strategy = make_strategy(self.settings.workers.consolidation)
        if isinstance(strategy, LlmStrategy):
            strategy.close()
        configured_policies(self.settings.workers, self.settings.zone_policies, strict=True)

    def reset(self) -> None:
        """Forget everything built so far (in a freshly forked child), without closing it:
        the parent still owns it."""
        with self._lock:
            for name in [n for n in vars(self) if n not in ("settings", "_lock")]:
                delattr(self, name)

    def close(self) -> None:
        with self._lock:
            if "store" in vars(self):
                self.store.close()
            if "audit" in vars(self):
                self.audit.close()
            if "client" in vars(self):
                self.client.close()
        self.reset()

    @cached_property
    def client(self) -> redis.Redis:
        if self.settings.redis_url is None:
            raise InvalidInput("the workers need HIVEMEM_REDIS_URL", field="redis_url")
        client = redis_client(
            self.settings.redis_url, command_timeout_s=self.settings.pool.command_timeout_s
        )
        check_zone_ladder(client, self.settings.pool.namespace)  # ZoneLadderMismatch
        return client

    @cached_property
    def keys(self) -> WorkerKeys:
        return WorkerKeys(self.settings.pool.namespace)

    @cached_property
    def bus(self) -> RedisBus:
        pool = self.settings.pool
        return RedisBus(self.client, namespace=pool.namespace, maxlen=pool.stream_maxlen)

    @cached_property
    def store(self) -> ZoneStore:
        store = open_zone_store(self.settings)
        if self.security is None:
            return store
        clear_keys = self.security.options.clear_metadata_keys
        return SecureZoneStore(store, self.security.keyring, clear_metadata_keys=clear_keys)

    @cached_property
    def ingest(self) -> IngestService:
        workers = self.settings.workers
        return IngestService(
            self.client,
            self.bus,
            self.store,
            self.keys,
            batch=workers.ingest_batch,
            threshold=workers.consolidation.threshold,
            lock_ttl_s=workers.lock_ttl_s,
            message_max_bytes=self.settings.pool.message_max_bytes,
            registry=self.registry,
            codec=self.ingest_codec,
            departed_codec=self.departed_codec,
            on_rejected=self._ingest_rejected,
        )

    @cached_property
    def security(self) -> PoolSecurity | None:
        """The security layer (None when ``security.enabled`` is off). The workers' identity
        (``hivemem-workers``, cleared for every zone) is registered, signed, on first use; its
        first registration, and a change of its key, are audited."""
        if not self.settings.security.enabled:
            return None
        security = PoolSecurity(self.settings, self.client, self.registry)
        # A new key: workers_key_file.
        register_audited(self.registry, self.audit, WORKER_SENDER, security.workers_info())
        return security

    @cached_property
    def registry(self) -> AgentRegistry:
        pool = self.settings.pool
        return AgentRegistry(
            self.client, namespace=pool.namespace, heartbeat_ttl_s=pool.heartbeat_ttl_s
        )

    @cached_property
    def codec(self) -> EnvelopeCodec:
        """How the workers open the ingest queues and seal and sign what they publish."""
        return PlainCodec() if self.security is None else self.security.workers_codec()

    @cached_property
    def ingest_codec(self) -> EnvelopeCodec:
        """How the workers open their ingest queues: agents seal what they queue to the
        workers' ingest key (:mod:`hivemem.security.ingest_seal`)."""
        if self.security is None:
            return self.codec
        return self.security.workers_ingest_codec(self.security.workers_codec())

    def departed_codec(self, info: AgentInfo) -> EnvelopeCodec:
        """How the workers open a departure's queues (what an agent queued before it was
        deregistered): as :attr:`ingest_codec`, checked against ``info``, its entry then."""
        if self.security is None:
            return self.codec
        return self.security.workers_departed_codec(info)

    def _ingest_rejected(self, error: MessageRejected, delivery: Delivery, zone: Zone) -> None:
        self.audit.record(
            AuditEvent.REJECTED_MESSAGE,
            actor=WORKER_SENDER,
            subject=delivery.topic,
            zone=zone.value,
            reason=error.reason,
            seq=delivery.seq,
        )

    @cached_property
    def consolidation(self) -> ConsolidationService:
        settings = self.settings.workers.consolidation
        return ConsolidationService(
            self.client,
            self.bus,
            self.store,
            self.keys,
            make_strategy(settings),
            OfflineStrategy(settings),
            lock_ttl_s=self.settings.workers.lock_ttl_s,
            send_batch=self.settings.pool.send_batch,
            message_max_bytes=self.settings.pool.message_max_bytes,
            codec=self.codec,
            max_plan=settings.max_plan_episodes,
        )

    @cached_property
    def forget(self) -> ForgetService:
        return ForgetService(
            self.client,
            self.bus,
            self.store,
            self.keys,
            self.ingest,
            audit=self.audit,
            lock_ttl_s=self.settings.workers.lock_ttl_s,
            send_batch=self.settings.pool.send_batch,
            message_max_bytes=self.settings.pool.message_max_bytes,
            codec=self.codec,
            keyring=None if self.security is None else self.security.keyring,
        )

    @cached_property
    def reseal(self) -> ResealService:
        """Re-sealing after key rotations. Raises InvalidInput with security off."""
        store = self.store
        if self.security is None or not isinstance(store, SecureZoneStore):
            raise InvalidInput("re-sealing needs security on", field="security.enabled")
        rotation = KeyRotation(
            self.security.keyring, self.client, namespace=self.settings.pool.namespace,
            audit=self.audit,
        )  # fmt: skip
        return ResealService(
            self.client, store, self.keys, self.ingest, rotation,
            lock_ttl_s=self.settings.workers.lock_ttl_s,
        )  # fmt: skip

    @cached_property
    def audit(self) -> AuditLog:
        return AuditLog(
            self.client, namespace=self.settings.pool.namespace, jsonl_path=self.settings.audit_file
        )

    @cached_property
    def archive(self) -> ArchiveService:
        return ArchiveService(
            self.store,
            requeue=self._requeue,
            client=self.client,
            keys=self.keys,
            lock_ttl_s=self.settings.workers.lock_ttl_s,
        )

    def _requeue(self, zone: Zone, episodes: Sequence[MemoryRecord]) -> None:
        """Queue ``episodes`` for consolidation (restored ones: see ArchiveService)."""
        with self.client.pipeline(transaction=True) as pipe:
            add_pending(pipe, self.keys, zone, episodes)
            pipe.execute()

    @cached_property
    def lifecycle(self) -> LifecycleService:
        return LifecycleService(self.store, self.archive)
