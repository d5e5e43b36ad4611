"""The worker fleet: ingest into the zone store, consolidation, archival and lifecycle policies,
as Celery tasks (:func:`make_app`) or as services in any process (:class:`WorkerRuntime`)."""

from hivemem.workers.app import make_app
from hivemem.workers.archive import ArchiveService
from hivemem.workers.consolidation import ConsolidationReport, ConsolidationService, ScopeBusy
from hivemem.workers.ingest import IngestService
from hivemem.workers.ingest_messages import IngestReport
from hivemem.workers.lifecycle import LifecycleReport, LifecycleService
from hivemem.workers.llm import LlmStrategy
from hivemem.workers.offline import OfflineStrategy
from hivemem.workers.policies import (
    DEFAULT_POLICIES,
    Action,
    InvalidPolicy,
    InvalidPolicyFile,
    Policy,
    PolicySet,
    When,
    cleanup_old_episodes,
    load_policies,
)
from hivemem.workers.runtime import WorkerRuntime, open_zone_store
from hivemem.workers.strategy import ConsolidationStrategy, Draft, Sources

__all__ = [
    "DEFAULT_POLICIES",
    "Action",
    "ArchiveService",
    "ConsolidationReport",
    "ConsolidationService",
    "ConsolidationStrategy",
    "Draft",
    "IngestReport",
    "IngestService",
    "InvalidPolicy",
    "InvalidPolicyFile",
    "LifecycleReport",
    "LifecycleService",
    "LlmStrategy",
    "OfflineStrategy",
    "Policy",
    "PolicySet",
    "ScopeBusy",
    "Sources",
    "When",
    "WorkerRuntime",
    "cleanup_old_episodes",
    "load_policies",
    "make_app",
    "open_zone_store",
]
