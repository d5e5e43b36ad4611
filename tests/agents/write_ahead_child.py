"""A pool agent that kills itself in the middle of a write, for tests/agents/test_write_ahead.py.

Run as ``python tests/agents/write_ahead_child.py SETTINGS.json SCENARIO``. The process attaches
agent "writer" (clearance SECRET, shares EPISODE), writes its starting records for user "gone"
in zone INTERNAL and waits until Redis has them all, writes ``{"ids": [...]}`` (those records)
on stdout, waits for a line on stdin, then arms the hook and starts the scenario's write. The
hook sends SIGKILL to this process right after the named call of the local store returns:
nothing runs after it, no ``except``, no ``finally``, no close. Index chunks are made small (4
records) so that a dozen records span several.

Scenarios (the write, and the call after which the process dies):

- ``forget``: ``forget(user_id="gone")`` of 10 records, after the first chunk of tombstones;
- ``delete``: ``delete`` of a record with two versions, after its tombstones;
- ``add_many``: ``add_many`` of 10 new records, after the first chunk was indexed;
- ``supersede``: ``supersede`` of a record, after the new version was stored (its predecessor
  not yet marked superseded);
- ``end_session``: ``end_session`` of a 3-record session, after the first promoted version
  was stored.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import structlog

from hivemem.agents import versions, write_path
from hivemem.agents.agent import Agent
from hivemem.pool.adapters.edge_index import EdgeIndex
from hivemem.pool.enums import Zone
from hivemem.pool.settings import HivememSettings
from hivemem.pool.shared import SharedMemoryPool

USER = "gone"
ZONE = Zone.INTERNAL
SMALL_CHUNK = 4


def attach(pool: SharedMemoryPool) -> Agent:
    """The writer, as the tests attach it again after the kill."""
    return pool.register_agent("writer", clearance="secret", share_levels=["episode"])


def die_after(name: str) -> None:
    """SIGKILL this process right after the first call of ``EdgeIndex.<name>`` returns."""
    original = getattr(EdgeIndex, name)

    def wrapped(self: EdgeIndex, *args: Any, **kwargs: Any) -> Any:
        result = original(self, *args, **kwargs)
        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGKILL)
        return result

    setattr(EdgeIndex, name, wrapped)


def main() -> None:
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=sys.stderr))
    settings = HivememSettings.model_validate_json(Path(sys.argv[1]).read_text("utf-8"))
    scenario = sys.argv[2]
    versions._TOMBSTONE_CHUNK = SMALL_CHUNK  # several chunks from few records
    write_path._CHUNK = SMALL_CHUNK
    pool = SharedMemoryPool.connect(settings)
    agent = attach(pool)
    memory = agent.memory
    if scenario == "end_session":
        items = [f"session fact {k} about the trip" for k in range(3)]
        start = memory.add_many(
            [{"content": text, "importance": 0.9, "zone": ZONE} for text in items],
            user_id=USER,
            session_id="trip",
            progress=False,
        )
    else:
        count = 1 if scenario in ("delete", "supersede") else 10
        items = [{"content": f"private fact {k} of the user", "zone": ZONE} for k in range(count)]
        start = memory.add_many(items, user_id=USER, progress=False)
    if scenario == "delete":
        start.append(memory.supersede(start[0].id, "private fact 0, revised"))
    assert agent.flush(60.0)
    sys.stdout.write(json.dumps({"ids": [r.id for r in start]}) + "\n")
    sys.stdout.flush()
    sys.stdin.readline()  # the test's go: its reader holds the starting records
    if scenario == "forget":
        die_after("put_tombstones")
        memory.forget(user_id=USER)
    elif scenario == "delete":
        die_after("put_tombstones")
        memory.delete(start[0].id)
    elif scenario == "add_many":
        die_after("upsert")
        items = [{"content": f"new fact {k}", "zone": ZONE} for k in range(10)]
        memory.add_many(items, user_id=USER, progress=False)
    elif scenario == "supersede":
        die_after("upsert")
        memory.supersede(start[0].id, "private fact 0, revised")
    elif scenario == "end_session":
        die_after("upsert")
        memory.end_session(user_id=USER, session_id="trip")
    raise SystemExit(f"scenario {scenario}: the hook did not fire")


if __name__ == "__main__":
    main()
