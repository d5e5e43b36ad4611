"""Waiting for something another thread or process does."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from hivemem.pool.errors import MemoryNotFound

if TYPE_CHECKING:
    from hivemem.agents.agent import Agent


def wait_for(condition: Callable[[], bool], timeout_s: float = 10.0, poll_s: float = 0.01) -> bool:
    """Poll ``condition`` until it holds or ``timeout_s`` is up; its last answer."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(poll_s)
    return condition()


def holds(agent: Agent, record_id: str) -> bool:
    """True when ``agent`` reads the record ``record_id`` (what another process sent it)."""
    try:
        agent.memory.get(record_id)
    except MemoryNotFound:
        return False
    return True
