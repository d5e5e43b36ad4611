"""``Agent``: a registered agent's handle in this process — its memory, wired to the pool.

Writes to ``agent.memory`` are local at once (read-your-writes) and reach other agents through
the outbox; records others share arrive in ``agent.memory`` by themselves. Create agents with
:meth:`hivemem.pool.shared.SharedMemoryPool.register_agent`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from hivemem.agents.identity import Identity
from hivemem.agents.inputs import check_seconds, record_id_of
from hivemem.agents.memory import HierarchicalMemory
from hivemem.agents.outbox import Outbox
from hivemem.agents.receiving import Receiver
from hivemem.agents.sending import Sender, ShareObserver
from hivemem.pool.adapters.redis_bus import RedisBus
from hivemem.pool.adapters.redis_errors import REDIS_DOWN
from hivemem.pool.adapters.redis_registry import AgentRegistry
from hivemem.pool.agent_info import AgentInfo
from hivemem.pool.envelope import PlainCodec
from hivemem.pool.errors import SupersessionConflict
from hivemem.pool.records import MemoryRecord
from hivemem.pool.settings import PoolSettings

_CLOSE_DRAIN_S = 2.0


class Agent:
    """One agent attached in this process. Close it (or the pool) to stop its threads."""

    def __init__(
        self,
        info: AgentInfo,
        memory: HierarchicalMemory,
        bus: RedisBus,
        registry: AgentRegistry,
        settings: PoolSettings,
        *,
        identity: Identity | None = None,
        relay: RedisBus | None = None,
        upkeep: Callable[[], object] | None = None,
        outbox: Outbox | None = None,
    ) -> None:
        """``bus`` is the agent's own connection (its Redis user, with ACLs); ``relay`` the
        pool's, for hand-overs to other agents' inboxes; ``identity`` how messages are sealed,
        signed and checked (plain when None); ``upkeep`` runs at each heartbeat, on the
        receiving thread (the pool re-seals the local store after key rotations with it);
        ``outbox`` the one of ``memory``'s directory, when the caller opened it already."""
        self.info = info
        self.memory = memory
        self.identity = identity or Identity(info, PlainCodec())
        self._outbox = outbox or Outbox(memory.path)
        self._sender = Sender(info, self._outbox, bus, settings, relay, self.identity)
        self._sharing = ShareObserver(
            info, self._outbox, self._sender.wake, settings, self.identity
        )
        memory.observe(self._sharing, journal=self._outbox)  # finishes a killed process's writes
        self._receiver = Receiver(
            info,
            memory,
            self._outbox,
            bus,
            settings,
            lambda: self._beat(registry, upkeep),
            identity=self.identity,
            relay=relay,
        )
        self._bus = bus
        self._registry = registry
        self._own_bus = relay is not None and bus is not relay
        self._closed = False
        self._sender.start()
        self._receiver.start()
        self._sender.wake()  # what an earlier process left in the outbox

    def _beat(self, registry: AgentRegistry, upkeep: Callable[[], object] | None) -> None:
        registry.heartbeat(self.info.agent_id)
        if upkeep is not None:
            upkeep()

    @property
    def agent_id(self) -> str:
        return self.info.agent_id

    @property
    def pending(self) -> int:
        """Messages in the outbox, not yet acknowledged by Redis."""
        return len(self._outbox)

    def on_receive(self, listener: Callable[[list[MemoryRecord]], None]) -> None:
        """Call ``listener`` with the records newly stored from each applied message (on the
        receiving thread; keep it short)."""
        self._receiver.listeners.append(listener)

    def wait_connected(self, timeout_s: float = 10.0) -> bool:
        """True once the receiver has subscribed and caught up with every topic; InvalidInput
        when ``timeout_s`` is not a number of seconds from 0."""
        return self._receiver.connected.wait(check_seconds(timeout_s, field="timeout_s"))

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until every queued message is acknowledged by Redis; False on timeout.
        InvalidInput when ``timeout_s`` is not a number of seconds from 0."""
        timeout_s = check_seconds(timeout_s, field="timeout_s")
        self._sender.send_now()  # sync_interval is no reason to wait here
        return self._sender.wait_idle(timeout_s)

    def hand_over(self, to_agent: str, record: MemoryRecord | str) -> MemoryRecord:
        """Queue this agent's stored copy of ``record`` (a record or its id), vectors included,
        for ``to_agent``'s inbox and return that copy. Raises AgentNotFound when ``to_agent``
        is not registered, MemoryNotFound when this agent's memory does not hold the record,
        SupersessionConflict (naming the current version) for a version no longer current.
        Use :meth:`SharedMemoryPool.share_knowledge`, which also checks that ``to_agent`` is
        cleared for the record and the zone's policy (and audits a refusal): this is its last
        step (a receiver still refuses what is above its clearance)."""
        record_id = record_id_of(record)
        self._registry.get(to_agent)
        # Under the memory's write lock: a delete or a new version written meanwhile would look
        # for the hand-over's note before it is made, and never follow it to the inbox.
        with self.memory.hold_writes():
            stored = self.memory.get(record_id, with_vectors=True)
            if not stored.is_current:  # it would arrive current: the receiver has no later one
                raise SupersessionConflict(stored.id, self.memory.get_history(stored.id)[-1].id)
            self._sharing.hand_over(to_agent, stored)
        return stored

    def close(self) -> None:
        """Send what is queued (briefly), stop the threads, close the memory. What could not
        be sent stays in the outbox for the next process that opens this agent."""
        if self._closed:
            return
        self._closed = True
        self._sender.send_now()
        self._sender.wait_idle(_CLOSE_DRAIN_S)
        self._sender.stop()
        self._receiver.stop()
        self._sender.join()
        self._receiver.join()
        self.memory.close()
        self._outbox.close()
        with contextlib.suppress(*REDIS_DOWN):  # not alive now; the key lapses anyway
            self._registry.stopped(self.info.agent_id)
        if self._own_bus:
            self._bus.client.close()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def __enter__(self) -> Agent:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
