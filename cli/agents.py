"""``hivemem agents``: register, list, show and revoke the pool's agents.

These commands touch the registry in Redis (and the audit log) only: registering does not open
the agent's memory (the first command or process that attaches the agent does), so it also
works while the agent runs elsewhere.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from hivemem.cli.output import add_json_flag, emit, open_pool, table
from hivemem.cli.scope_args import add_choice, add_compartments, warn
from hivemem.pool.agent_info import AgentInfo
from hivemem.pool.enums import Level, Zone
from hivemem.pool.settings import HivememSettings

if TYPE_CHECKING:
    from hivemem.pool.shared import SharedMemoryPool


def _levels(levels: list[Level] | list[str]) -> str:
    """Levels for reading: "all", "-" for none, else comma-separated."""
    named = [Level(level).value for level in levels]
    if named == [level.value for level in Level]:
        return "all"
    return ",".join(named) or "-"


def _described(pool: SharedMemoryPool, info: AgentInfo) -> dict[str, Any]:
    last_seen = pool.registry.last_seen(info.agent_id)
    return {
        **info.model_dump(mode="json"),
        "alive": last_seen is not None,
        "last_seen": None if last_seen is None else last_seen.isoformat(),
    }


def _register(args: argparse.Namespace, settings: HivememSettings) -> int:
    optional = {} if args.receive is None else {"receive_levels": args.receive}
    info = AgentInfo(
        agent_id=args.agent_id,
        display_name=args.name or args.agent_id,
        capabilities=args.capability or [],
        clearance=args.clearance,
        compartments=args.compartment or [],
        share_levels=args.share or [],
        sync_interval=args.sync_interval,
        **optional,
    )
    with open_pool(settings) as pool:
        info, created = pool.register(info)
        verb = "registered" if created else "updated"
        emit(
            args,
            _described(pool, info),
            lambda: print(
                f"{verb} agent {info.agent_id}: clearance {info.clearance.value}"
                + (f" + {','.join(info.compartments)}" if info.compartments else "")
                + f", shares "
                f"{_levels(info.share_levels)}, receives {_levels(info.receive_levels)}"
            ),
        )
    return 0


def _list(args: argparse.Namespace, settings: HivememSettings) -> int:
    with open_pool(settings) as pool:
        described = [_described(pool, info) for info in pool.agents()]
    rows = [
        (
            d["agent_id"],
            d["display_name"],
            d["clearance"],
            _levels(d["share_levels"]),
            _levels(d["receive_levels"]),
            "yes" if d["alive"] else "no",
        )
        for d in described
    ]
    emit(
        args,
        described,
        lambda: table(
            f"{len(rows)} agent(s)",
            ["agent", "name", "clearance", "shares", "receives", "alive"],
            rows,
        ),
    )
    return 0


def _show(args: argparse.Namespace, settings: HivememSettings) -> int:
    with open_pool(settings) as pool:
        described = _described(pool, pool.get_agent(args.agent_id))
        memory_dir = pool.agent_dir(args.agent_id)
    described["memory_dir"] = str(memory_dir)
    described["memory_dir_exists"] = memory_dir.exists()
    rows = [
        (key, ", ".join(map(str, value)) if isinstance(value, list) else value)
        for key, value in described.items()
    ]
    emit(args, described, lambda: table(f"agent {args.agent_id}", ["field", "value"], rows))
    return 0


def _discard(args: argparse.Namespace, pool: SharedMemoryPool) -> int:
    """``revoke --discard-queued`` of an agent not registered (revoked before): delete what
    it had queued, if the workers have not stored it yet."""
    gone = pool.discard_queued(args.agent_id)
    emit(
        args,
        {"agent_id": args.agent_id, "registered": False, "departures_discarded": gone},
        lambda: print(
            f"agent {args.agent_id} is not registered: "
            + (
                "the writes it had queued for the workers before its revocation are deleted"
                if gone
                else "nothing it queued is waiting for the workers"
            )
        ),
    )
    return 0


def _revoke(args: argparse.Namespace, settings: HivememSettings) -> int:
    with open_pool(settings) as pool:
        if args.discard_queued and not pool.registry.exists(args.agent_id):
            return _discard(args, pool)
        alive = pool.is_alive(args.agent_id)
        pool.deregister(args.agent_id, keep_queued=not args.discard_queued)
        memory_dir = pool.agent_dir(args.agent_id)
    broker_enforced = settings.security.enabled and settings.security.redis_acl
    if alive and broker_enforced:
        warn(
            f"agent {args.agent_id} was running: its Redis user is removed and its connections "
            "closed, so it can neither send nor receive any more"
        )
    elif alive:
        warn(
            f"agent {args.agent_id} sent a heartbeat within the last "
            f"{settings.pool.heartbeat_ttl_s:g} s: a process running it keeps its connection "
            "until it stops"
        )
    emit(
        args,
        {
            "agent_id": args.agent_id,
            "revoked": True,
            "queued_writes": "discarded" if args.discard_queued else "kept",
            "memory_dir": str(memory_dir),
        },
        lambda: print(
            f"revoked agent {args.agent_id}: removed from the registry and its inbox dropped. "
            + (
                "The writes it queued for the workers are deleted unstored. "
                if args.discard_queued
                else "The workers still store the writes it queued before now. "
            )
            + f"Its local memory and outbox stay on disk under {memory_dir} (delete the directory "
            "to destroy them); what it shared stays with the agents that received it."
        ),
    )
    return 0


def register(commands: argparse._SubParsersAction[Any]) -> None:
    group = commands.add_parser(
        "agents",
        help="register, list, show and revoke the pool's agents",
        description="The pool's agent registry (in Redis).",
    )
    sub = group.add_subparsers(dest="agents_command", required=True, metavar="COMMAND")

    reg = sub.add_parser(
        "register",
        help="register an agent, or update one (same clearance: shares, receives, name)",
        description="Register an agent in the pool, or update a registered one. A clearance "
        "never changes by re-registering: revoke the agent first.",
    )
    reg.add_argument("agent_id", metavar="AGENT_ID")
    add_choice(reg, "--clearance", Zone, "the highest zone it may read", default="public")
    add_compartments(reg, "compartments it holds")
    add_choice(reg, "--share", Level, "levels it sends to other agents (default none)", many=True)
    add_choice(reg, "--receive", Level, "levels it applies from others (default all)", many=True)
    reg.add_argument("--name", default="", help="display name (default: the id)")
    reg.add_argument(
        "--capability", action="append", metavar="LABEL", help="what it can do; repeat for several"
    )
    reg.add_argument(
        "--sync-interval",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="0 sends each write at once (default); else what accumulated, once per interval",
    )
    add_json_flag(reg)
    reg.set_defaults(handler=_register)

    lister = sub.add_parser("list", help="list registered agents and whether they are alive")
    add_json_flag(lister)
    lister.set_defaults(handler=_list)

    show = sub.add_parser("show", help="show one agent: registration, liveness, memory directory")
    show.add_argument("agent_id", metavar="AGENT_ID")
    add_json_flag(show)
    show.set_defaults(handler=_show)

    revoke = sub.add_parser(
        "revoke",
        help="remove an agent from the registry and drop its inbox (its memory stays on disk)",
    )
    revoke.add_argument("agent_id", metavar="AGENT_ID")
    revoke.add_argument(
        "--discard-queued",
        action="store_true",
        help="delete, unstored, the writes it queued for the workers (for a compromised agent; "
        "by default they are stored); also for an agent revoked before",
    )
    add_json_flag(revoke)
    revoke.set_defaults(handler=_revoke)
