"""The agent registry in Redis: register, look up, heartbeat and deregister agents.

Keys under the pool namespace ``ns``: ``ns:registry:agents`` (hash: agent id → AgentInfo JSON),
``ns:registry:clearance`` (hash: agent id → zone; what a re-registration is checked against),
``ns:registry:zones`` (the zone ladder, JSON, set once: see :func:`check_zone_ladder`) and
``ns:agent:<id>:alive`` (the last heartbeat, expiring after the heartbeat TTL).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

import redis

from hivemem.pool.agent_info import AgentInfo
from hivemem.pool.enums import Zone, zone_names
from hivemem.pool.errors import AgentNotFound, RegistrationConflict, ZoneLadderMismatch
from hivemem.pool.ids import check_agent_id

_REGISTER = (Path(__file__).parent / "lua" / "register.lua").read_text()


def check_zone_ladder(client: redis.Redis, namespace: str) -> None:
    """Store this process's zone ladder in the pool, unless one is there already; raise
    ZoneLadderMismatch when the stored one differs (every process of a pool must order the
    same zones the same way)."""
    key = f"{namespace}:registry:zones"
    mine = list(zone_names())
    client.set(key, json.dumps(mine), nx=True)
    stored = cast("bytes | None", client.get(key))
    held = json.loads(stored) if stored else mine
    if held != mine:
        raise ZoneLadderMismatch(
            f"this process's zones ({' < '.join(mine)}) differ from the pool's "
            f"({' < '.join(map(str, held))}); set HIVEMEM_ZONES to the pool's"
        )


class AgentRegistry:
    """Register, look up, heartbeat and deregister agents."""

    def __init__(self, client: redis.Redis, *, namespace: str, heartbeat_ttl_s: float) -> None:
        self.client = client
        self.namespace = namespace
        self.heartbeat_ttl_s = heartbeat_ttl_s
        self._agents = f"{namespace}:registry:agents"
        self._clearance = f"{namespace}:registry:clearance"
        self._register = client.register_script(_REGISTER)

    def _alive_key(self, agent_id: str) -> str:
        return f"{self.namespace}:agent:{check_agent_id(agent_id)}:alive"

    def register(self, info: AgentInfo) -> AgentInfo:
        """Add ``info``, or update an agent of the same id and clearance (keeping its first
        registration time). Raises RegistrationConflict when the id holds another clearance."""
        try:
            prior = self.get(info.agent_id)
            info = info.model_copy(update={"registered_at": prior.registered_at})
        except AgentNotFound:
            pass
        try:
            self._register(
                keys=[self._agents, self._clearance],
                args=[info.agent_id, info.clearance.value, info.model_dump_json()],
            )
        except redis.ResponseError as error:
            if not str(error).startswith("CONFLICT"):
                raise
            held = str(error).split(" ", 1)[1]
            raise RegistrationConflict(
                f"agent {info.agent_id} is registered with clearance {held}, not "
                f"{info.clearance.value}; deregister it first to change its clearance"
            ) from None
        return info

    def set_clearance(
        self,
        agent_id: str,
        zone: Zone,
        *,
        resign: Callable[[AgentInfo], AgentInfo] | None = None,
    ) -> tuple[AgentInfo, Zone]:
        """Change a registered agent's clearance (an operator's grant or revocation); returns
        the new info and the clearance it held. ``resign`` re-signs the changed entry (in the
        same transaction). Raises AgentNotFound."""
        check_agent_id(agent_id)
        with self.client.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(self._agents)  # type: ignore[no-untyped-call]
                    raw = cast("bytes | None", pipe.hget(self._agents, agent_id))
                    if raw is None:
                        raise AgentNotFound(agent_id)
                    prior = AgentInfo.model_validate_json(raw)
                    info = prior.model_copy(update={"clearance": zone})
                    if resign is not None:
                        info = resign(info)
                    pipe.multi()
                    pipe.hset(self._clearance, agent_id, zone.value)
                    pipe.hset(self._agents, agent_id, info.model_dump_json())
                    pipe.execute()
                except redis.WatchError:
                    continue
                return info, prior.clearance

    def exists(self, agent_id: str) -> bool:
        return bool(self.client.hexists(self._agents, check_agent_id(agent_id)))

    def get(self, agent_id: str) -> AgentInfo:
        raw = cast("bytes | None", self.client.hget(self._agents, check_agent_id(agent_id)))
        if raw is None:
            raise AgentNotFound(agent_id)
        return AgentInfo.model_validate_json(raw)

    def list(self) -> list[AgentInfo]:
        """Every registered agent, by id."""
        raw = cast("dict[bytes, bytes]", self.client.hgetall(self._agents))
        return sorted(
            (AgentInfo.model_validate_json(v) for v in raw.values()), key=lambda a: a.agent_id
        )

    def heartbeat(self, agent_id: str) -> None:
        self.client.set(
            self._alive_key(agent_id), str(time.time()), px=int(self.heartbeat_ttl_s * 1000)
        )

    def last_seen(self, agent_id: str) -> datetime | None:
        """When the agent last sent a heartbeat, if within the TTL."""
        raw = cast("bytes | None", self.client.get(self._alive_key(agent_id)))
        if raw is None:
            return None
        return datetime.fromtimestamp(float(raw), tz=UTC)

    def is_alive(self, agent_id: str) -> bool:
        return self.last_seen(agent_id) is not None

    def deregister(self, agent_id: str) -> None:
        """Remove the agent; raises AgentNotFound when it is not registered."""
        check_agent_id(agent_id)
        with self.client.pipeline(transaction=True) as pipe:
            pipe.hdel(self._agents, agent_id)
            pipe.hdel(self._clearance, agent_id)
            pipe.delete(self._alive_key(agent_id))
            removed, _, _ = pipe.execute()
        if not removed:
            raise AgentNotFound(agent_id)
