"""What a receiver knows of senders: their registry entries, looked up briefly cached.

Receivers check every message against its sender's registry entry (public key, clearance, the
administrator's signature). Looking it up per message would cost a Redis round trip each, so
:class:`SenderDirectory` keeps each answer (an absent sender included) for ``ttl_s`` seconds:
a revocation or a clearance change reaches every receiver within that time.
"""

from __future__ import annotations

import threading
import time

from hivemem.pool.adapters.redis_registry import AgentRegistry
from hivemem.pool.agent_info import AgentInfo
from hivemem.pool.errors import AgentNotFound, InvalidInput
from hivemem.security.message_check import SenderFacts


def facts_of(info: AgentInfo) -> SenderFacts:
    """What a message check needs of a registry entry."""
    return SenderFacts(
        agent_id=info.agent_id,
        clearance=info.clearance,
        public_key=info.public_key,
        registry_signature=info.registry_signature,
        compartments=tuple(info.compartments),
    )


#: A sender's entry is read again for a refused message at most this often (seconds).
_REFRESH_S = 0.1


class SenderDirectory:
    """Registry lookups for message checks (thread-safe)."""

    def __init__(self, registry: AgentRegistry, *, ttl_s: float = 1.0) -> None:
        self._registry = registry
        self._ttl_s = ttl_s
        self._cache: dict[str, tuple[float, SenderFacts | None]] = {}
        self._lock = threading.Lock()

    def __call__(self, agent_id: str) -> SenderFacts | None:
        """The sender's facts, or None when it is not registered (deregistered, never was) or
        its entry does not read here (say it names a zone this process's ladder lacks): its
        messages are then rejected as from an unknown sender, and the receiver goes on."""
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(agent_id)
        if hit is not None and now - hit[0] < self._ttl_s:
            return hit[1]
        try:
            facts: SenderFacts | None = facts_of(self._registry.get(agent_id))
        except (AgentNotFound, InvalidInput):  # InvalidIdentifier is one too
            facts = None
        with self._lock:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[agent_id] = (now, facts)
        return facts

    def fresh(self, agent_id: str, *, limited: bool = True) -> SenderFacts | None:
        """The sender's facts read again from the registry (for a message its cached entry
        refused: its key or clearance may have changed within ``ttl_s``). ``limited``: not if
        they were read in the last :data:`_REFRESH_S` (then the cached ones), so that a flood
        of refused pub/sub messages costs at most a few reads per sender per second; the
        workers' queues, which hold their agent's writes only, ask without the limit."""
        with self._lock:
            hit = self._cache.get(agent_id)
        if limited and hit is not None and time.monotonic() - hit[0] < _REFRESH_S:
            return hit[1]
        self.forget(agent_id)
        return self(agent_id)

    def forget(self, agent_id: str) -> None:
        """Drop the cached entry (this process changed it)."""
        with self._lock:
            self._cache.pop(agent_id, None)
