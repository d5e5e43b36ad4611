"""What the commands that act as a registered agent share: their arguments (the agent, the scope,
choices from the enums), a session as that agent (attach, work, flush) and plain-text tables.

Only light modules are imported at the top: ``hivemem --help`` builds every parser.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hivemem.cli.output import open_pool, seconds
from hivemem.pool.compartments import compartment_names
from hivemem.pool.enums import Zone
from hivemem.pool.errors import HivememError, StoreLocked
from hivemem.pool.settings import HivememSettings

if TYPE_CHECKING:
    from hivemem.agents.agent import Agent
    from hivemem.pool.records import MemoryRecord

#: Seconds a command waits for the agent to catch up with what the pool holds for it.
CATCH_UP_S = 10.0
#: Default seconds a command waits for its writes to be acknowledged by Redis.
FLUSH_S = 10.0


class AgentBusy(HivememError):
    """Raised when the agent a command acts as is attached by another process: one memory
    directory has one writer at a time. ``path`` is the locked directory."""

    def __init__(self, agent_id: str, path: Path) -> None:
        super().__init__(
            f"agent {agent_id} is attached by another process (its memory {path} is locked); "
            "run the command when that process has stopped, or do it through that process"
        )
        self.agent_id = agent_id
        self.path = path


class WritesPending(HivememError):
    """Raised when a command's writes were not acknowledged by Redis in time. They are durable
    in the agent's outbox (``path``) and go out the next time the agent is attached."""

    def __init__(self, agent_id: str, pending: int, path: Path) -> None:
        super().__init__(
            f"the pool did not acknowledge {pending} message(s) of agent {agent_id} in time; "
            f"the writes are done locally and safe in its outbox under {path}, and go out the "
            "next time the agent is attached"
        )
        self.agent_id = agent_id
        self.pending = pending
        self.path = path


def values(enum: type[StrEnum] | type[Zone]) -> list[str]:
    """The values of ``enum`` (or the configured zones), for argparse ``choices``."""
    return [member.value for member in enum]


def add_agent(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--agent",
        required=True,
        metavar="AGENT_ID",
        help="act as this registered agent (its memory under HIVEMEM_DATA_DIR/agents)",
    )


def add_scope(parser: argparse.ArgumentParser, *, user_required: bool = True) -> None:
    """``--user`` (a hard partition), ``--session`` and ``--run``, which narrow it."""
    parser.add_argument(
        "--user", required=user_required, metavar="USER_ID", help="the user the memories are of"
    )
    parser.add_argument("--session", metavar="SESSION_ID", help="narrow to one session")
    parser.add_argument("--run", metavar="RUN_ID", help="narrow to one run")


def add_flush_timeout(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--flush-timeout",
        type=seconds,
        default=FLUSH_S,
        metavar="SECONDS",
        help=f"how long to wait for the pool to acknowledge the writes (default {FLUSH_S:g})",
    )


def add_compartments(parser: argparse.ArgumentParser, help_text: str) -> None:
    """``--compartment NAME``, repeatable, one of the configured compartments (main() builds
    the settings before the parser)."""
    names = compartment_names()
    parser.add_argument(
        "--compartment",
        action="append",
        choices=names,
        metavar="COMPARTMENT",
        help=f"{help_text} ({', '.join(names) or 'none configured'}); repeat for several",
    )


def add_choice(
    parser: argparse.ArgumentParser,
    flag: str,
    enum: type[StrEnum] | type[Zone],
    help_text: str,
    *,
    many: bool = False,
    default: str | None = None,
) -> None:
    """An option whose values are those of ``enum``; ``many``: repeatable, one value per flag
    (a flag taking several would swallow the positional argument after it)."""
    options: dict[str, Any] = {"choices": values(enum), "metavar": flag.removeprefix("--").upper()}
    shown = f"{help_text} ({', '.join(values(enum))})"
    if many:
        parser.add_argument(flag, action="append", help=f"{shown}; repeat for several", **options)
    else:
        parser.add_argument(flag, default=default, help=shown, **options)


def record_json(record: MemoryRecord) -> dict[str, Any]:
    """A record as JSON data, without its vectors (derived data, and large)."""
    return record.model_dump(mode="json", exclude={"vector", "sparse"})


def warn(message: str) -> None:
    print(f"hivemem: {message}", file=sys.stderr)


@contextmanager
def acting_as(
    settings: HivememSettings,
    agent_id: str,
    *,
    catch_up: bool = False,
    flush_timeout_s: float = FLUSH_S,
) -> Iterator[Agent]:
    """Attach the registered agent ``agent_id`` in this process for the duration of a command;
    ``catch_up``: first wait (up to CATCH_UP_S) until it has applied what the pool holds for
    it. When the body returns, wait until its writes are acknowledged by Redis.

    Raises PoolUnavailable, AgentNotFound, AgentBusy, or WritesPending after the body."""
    with open_pool(settings) as pool:
        try:
            agent = pool.attach(agent_id)
        except StoreLocked:
            raise AgentBusy(agent_id, pool.agent_dir(agent_id)) from None
        if catch_up and not agent.wait_connected(CATCH_UP_S):
            warn(
                f"agent {agent_id} has not caught up with the pool within {CATCH_UP_S:g} s; "
                "what others shared lately may be missing"
            )
        yield agent
        if not agent.flush(flush_timeout_s):
            raise WritesPending(agent_id, agent.pending, agent.memory.path)
