"""One pool agent in its own OS process, driven by tests/pool/test_sync_processes.py.

Run as ``python tests/pool/sync_child.py CONFIG.json``. The config names the settings (JSON of a
HivememSettings), the agent (id, clearance, share_levels, receive_levels) and the user id its
records belong to. The process connects to the pool, registers (or re-attaches) the agent, waits
until its receiver is connected and answers ``{"reply": "ready", ...}``.

Then it reads one JSON command per line on stdin and answers each with one line
``@@{"reply": <op>, ...}`` on stdout (protocol lines carry the ``@@`` prefix; logs go to stderr):

- ``{"op": "add_many", "items": [...]}``: one ``add_many`` call; answers the new ids in order;
- ``{"op": "add_each", "items": [...], "interval_s": 0.02}``: one ``add`` per item; after each
  returned (acknowledged) write, an event line ``@@{"event": "ack", "id": ..., "content": ...,
  "pending": <outbox size then>}``;
- ``{"op": "flush", "timeout_s": 30}``: ``Agent.flush``; answers whether the outbox drained;
- ``{"op": "pending"}``: the outbox size;
- ``{"op": "received"}``: every record held that another agent shared (``received_from`` set);
- ``{"op": "close"}``: closes the pool and exits.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import structlog

from hivemem.agents.agent import Agent
from hivemem.pool.settings import HivememSettings
from hivemem.pool.shared import SharedMemoryPool

PREFIX = "@@"


def emit(message: dict[str, Any]) -> None:
    """Write one protocol line to stdout."""
    sys.stdout.write(PREFIX + json.dumps(message) + "\n")
    sys.stdout.flush()


def received(agent: Agent, user_id: str) -> list[dict[str, Any]]:
    """Every record ``agent`` holds that another agent shared with it."""
    records = agent.memory.list_memories(user_id=user_id, limit=100_000, include_superseded=True)
    return [
        {
            "id": r.id,
            "content": r.content,
            "level": r.level.value,
            "zone": r.zone.value,
            "received_from": r.received_from,
        }
        for r in records
        if r.received_from is not None
    ]


def handle(agent: Agent, user_id: str, command: dict[str, Any]) -> dict[str, Any]:
    """Run one command; returns the reply's fields."""
    op = command["op"]
    if op == "add_many":
        stored = agent.memory.add_many(
            command["items"], user_id=user_id, agent_id=agent.agent_id, progress=False
        )
        return {"ids": [r.id for r in stored]}
    if op == "add_each":
        ids = []
        for item in command["items"]:
            record = agent.memory.add(user_id=user_id, agent_id=agent.agent_id, **item)
            ids.append(record.id)
            emit(
                {
                    "event": "ack",
                    "id": record.id,
                    "content": record.content,
                    "pending": agent.pending,
                }
            )
            time.sleep(command.get("interval_s", 0.0))
        return {"ids": ids}
    if op == "flush":
        return {"flushed": agent.flush(command.get("timeout_s", 30.0)), "pending": agent.pending}
    if op == "pending":
        return {"pending": agent.pending}
    if op == "received":
        return {"records": received(agent, user_id)}
    raise ValueError(f"unknown op {op!r}")


def main(config_path: str) -> int:
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=sys.stderr))
    config = json.loads(Path(config_path).read_text(encoding="utf-8"))
    settings = HivememSettings.model_validate_json(config["settings"])
    spec = config["agent"]
    pool = SharedMemoryPool.connect(settings)
    try:
        agent = pool.register_agent(
            spec["agent_id"],
            clearance=spec["clearance"],
            share_levels=spec["share_levels"],
            receive_levels=spec["receive_levels"],
        )
        connected = agent.wait_connected(config.get("connect_timeout_s", 60.0))
        emit({"reply": "ready", "connected": connected, "pending": agent.pending})
        for line in sys.stdin:
            if not line.strip():
                continue
            command = json.loads(line)
            if command["op"] == "close":
                break
            emit({"reply": command["op"], **handle(agent, config["user_id"], command)})
    finally:
        pool.close()
    emit({"reply": "close"})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
