"""The security layer as one pool process holds it: keys, the admin signer, codecs and ACLs.

:class:`PoolSecurity` is built from the settings and the process's trusted (administrator's)
Redis connection, by :class:`~hivemem.pool.shared.SharedMemoryPool` and by the workers. It
holds the zone keyring (data keys wrapped by the master key), the administrator's signer of
registry entries, the directory receivers look senders up in, and, with ``redis_acl``, the
provisioning of agents' Redis users. Agents' private keys live in their directories
(``<data_dir>/agents/<id>/signing.key``, readable by the owner only); the workers' one in Redis,
wrapped by the master key (or as ``security.workers_key_file`` says).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from functools import partial
from pathlib import Path

import redis
import structlog

from hivemem.pool.adapters.redis_registry import AgentRegistry
from hivemem.pool.agent_info import AgentInfo
from hivemem.pool.compartments import compartment_names
from hivemem.pool.enums import Zone
from hivemem.pool.errors import InvalidInput
from hivemem.pool.settings import HivememSettings
from hivemem.security.ingest_seal import IngestCodec, IngestOpener
from hivemem.security.key_provider import key_provider
from hivemem.security.keyring import ZoneKeyring
from hivemem.security.message_check import MessageCheck, ReplayGuard, SenderFacts
from hivemem.security.redis_acl import AgentAcl
from hivemem.security.sealing import Sealer
from hivemem.security.senders import SenderDirectory, facts_of
from hivemem.security.signing import AdminSigner, SigningKey
from hivemem.security.wire import SecureCodec

log = structlog.get_logger(__name__)

#: Looks a sender up: its registry entry's facts, or None (not registered).
Senders = Callable[[str], SenderFacts | None]
#: The sender id of everything the workers publish.
WORKER_SENDER = "hivemem-workers"


def _earlier_key(path: Path) -> bytes | None:
    """The private bytes of a worker's own key of earlier versions at ``path``, if there is
    one that reads (a damaged one is logged and passed over: a fresh key, not no worker)."""
    if not path.exists():
        return None
    try:
        return SigningKey.load(path).private_bytes()
    except InvalidInput as error:
        log.warning("workers_key_unreadable", path=str(path), error=str(error)[:200])
        return None


class _QueueGuard(ReplayGuard):
    """No replay memory, for durable queues: their entries are consumed once, by position, and
    a worker that crashed before committing must read the same messages again."""

    def check_and_remember(self, message_id: str, sent_at: datetime, now: datetime) -> bool:
        del message_id, sent_at, now
        return True


class PoolSecurity:
    """Keys, signer, sender directory and ACLs of one process (see the module docstring)."""

    def __init__(
        self, settings: HivememSettings, client: redis.Redis, registry: AgentRegistry
    ) -> None:
        self.settings = settings
        self.options = settings.security
        namespace = settings.pool.namespace
        self.keyring = ZoneKeyring(client, key_provider(settings), namespace=namespace)
        admin_file = self.options.admin_key_file or settings.data_dir / "keys" / "admin.key"
        self.admin = AdminSigner.from_file(admin_file)
        self.senders = SenderDirectory(registry, ttl_s=self.options.registry_cache_s)
        self.acl = AgentAcl(client, namespace=namespace) if self.options.redis_acl else None
        self._workers_key: SigningKey | None = None

    def signed(self, info: AgentInfo) -> AgentInfo:
        """``info`` with the administrator's signature over its id, clearance, compartments and
        key."""
        signature = self.admin.sign_entry(
            info.agent_id, info.clearance, info.public_key, compartments=info.compartments
        )
        return info.model_copy(update={"registry_signature": signature})

    def agent_key(self, agent_dir: Path) -> SigningKey:
        """The agent's signing key, issued (and saved in its directory) on first use."""
        return SigningKey.load_or_create(agent_dir / "signing.key")

    def workers_key(self) -> SigningKey:
        """The key every worker of the pool signs with: ``security.workers_key_file`` when
        set, else one kept in Redis wrapped by the master key, as the workers' ingest key is
        (:meth:`ZoneKeyring.workers_signing_seed`), so every worker holding the master key
        has the same one. A worker of a version before 2026-11-22 kept its own in
        ``<data_dir>/keys/workers.key``: the first to ask brings it, so that a lone worker's
        key does not change. Kept once read."""
        if self._workers_key is None:
            if self.options.workers_key_file is not None:
                key = SigningKey.load_or_create(self.options.workers_key_file)
            else:
                earlier = self.settings.data_dir / "keys" / "workers.key"
                seed = self.keyring.workers_signing_seed(lambda: _earlier_key(earlier))
                key = SigningKey.from_private_bytes(seed)
            self._workers_key = key
        return self._workers_key

    def _check(self, guard: ReplayGuard) -> MessageCheck:
        return MessageCheck(
            admin_public_key=self.admin.public_key,
            max_age_s=self.options.max_message_age_s,
            max_skew_s=self.options.max_clock_skew_s,
            guard=guard,
        )

    def agent_codec(self, info: AgentInfo, key: SigningKey) -> SecureCodec:
        """What an agent seals, signs and opens with: no key above its clearance, and a replay
        memory as long as a message may live."""
        window_s = self.options.max_message_age_s + self.options.max_clock_skew_s
        return SecureCodec(
            sealer=Sealer(self.keyring, clearance=info.clearance),
            signer=key,
            sender_id=info.agent_id,
            check=self._check(ReplayGuard(window_s)),
            senders=self.senders,
            refresh=self.senders.fresh,
            compartments=info.compartments,
        )

    def workers_codec(self, senders: Senders | None = None) -> SecureCodec:
        """What the workers open the ingest queues with and publish with: every zone, no age
        or replay check (a durable queue, read by position). ``senders``: whose entries the
        messages are checked against (by default the registry's, :attr:`senders`)."""
        return SecureCodec(
            sealer=Sealer(self.keyring, clearance=Zone.top()),
            signer=self.workers_key(),
            sender_id=WORKER_SENDER,
            check=self._check(_QueueGuard(self.options.max_message_age_s)),
            senders=self.senders if senders is None else senders,
            # A queue holds its agent's writes only: a refused one is always looked up again.
            refresh=partial(self.senders.fresh, limited=False) if senders is None else None,
            check_age=False,
        )

    def workers_departed_codec(self, info: AgentInfo) -> IngestCodec:
        """What the workers open a departure's queues with (what an agent queued before it
        was deregistered): as their ingest codec, the messages checked against ``info``, its
        registry entry as it stood then, and sent by it alone."""
        facts = facts_of(info)
        return self.workers_ingest_codec(
            self.workers_codec(lambda sender: facts if sender == info.agent_id else None)
        )

    def workers_ingest_codec(self, codec: SecureCodec) -> IngestCodec:
        """What the workers open their ingest queues with: the wrap to the workers' ingest key
        (:mod:`hivemem.security.ingest_seal`), then ``codec`` (a :meth:`workers_codec`)."""
        return IngestCodec(codec, IngestOpener(self.keyring))

    def workers_info(self) -> AgentInfo:
        """The workers' registry entry (a service identity cleared for every zone), signed."""
        info = AgentInfo(
            agent_id=WORKER_SENDER,
            display_name="hivemem workers",
            capabilities=["service"],
            clearance=Zone.top(),
            compartments=list(compartment_names()),
            public_key=self.workers_key().public_key,
        )
        return self.signed(info)
