"""What the pool knows of an agent: identity, clearance, what it shares and receives."""

from __future__ import annotations

from typing import Annotated

from pydantic import BeforeValidator, Field, field_validator

from hivemem.pool.base import Model
from hivemem.pool.enums import Level, Zone
from hivemem.pool.ids import check_agent_id
from hivemem.pool.records import Compartments, Labels, UtcDatetime, utc_now


def _agent_id(value: object) -> str:
    return check_agent_id(value)


#: Checked before pydantic's coercion: bytes are no id.
AgentId = Annotated[str, BeforeValidator(_agent_id)]


class AgentInfo(Model):
    """An agent as the pool knows it.

    ``share_levels`` leave the agent; ``receive_levels`` are the levels it applies from others
    (by default every level); ``sync_interval`` in seconds: 0 sends each write at once, a
    positive value sends what accumulated once per interval, in one round trip.
    """

    agent_id: AgentId
    display_name: str = Field(default="", max_length=200)
    capabilities: Labels = Field(default_factory=list)
    clearance: Zone = Zone.PUBLIC
    #: The compartments the agent holds (it reads a record only when it holds all of the
    #: record's, see :mod:`hivemem.pool.compartments`).
    compartments: Compartments = Field(default_factory=list)
    share_levels: list[Level] = Field(default_factory=list)
    receive_levels: list[Level] = Field(default_factory=lambda: list(Level))
    sync_interval: float = Field(default=0.0, ge=0.0, le=3600.0)
    registered_at: UtcDatetime = Field(default_factory=utc_now)
    #: The agent's Ed25519 public key (base64), issued at registration when security is on.
    public_key: str | None = Field(default=None, max_length=64)
    #: The pool administrator's signature over (agent_id, clearance, compartments, public_key).
    registry_signature: str | None = Field(default=None, max_length=128)

    @field_validator("share_levels", "receive_levels")
    @classmethod
    def _unique(cls, value: list[Level]) -> list[Level]:
        return sorted(set(value), key=lambda level: level.rank)
