"""``hivemem zones``: the trust zones, and granting or revoking an agent's clearance."""

from __future__ import annotations

import argparse
from typing import Any

from hivemem.pool.enums import Zone
from hivemem.pool.settings import HivememSettings

_ZONES = [zone.value for zone in Zone]


def _list(args: argparse.Namespace, settings: HivememSettings) -> int:
    from hivemem.cli.output import emit, open_pool, table

    with open_pool(settings) as pool:
        agents = pool.agents()
    cleared = {
        zone.value: sorted(a.agent_id for a in agents if a.clearance >= zone) for zone in Zone
    }
    rows = [
        [rank, zone, len(ids), ", ".join(ids)] for rank, (zone, ids) in enumerate(cleared.items())
    ]
    emit(
        args,
        [{"zone": zone, "rank": rank, "cleared_agents": ids}
         for rank, (zone, ids) in enumerate(cleared.items())],
        lambda: table("Zones, lowest first", ["rank", "zone", "agents cleared", "who"], rows),
    )  # fmt: skip
    return 0


def _change(args: argparse.Namespace, settings: HivememSettings) -> int:
    """grant: clearance at least ZONE; revoke: clearance below ZONE (no change when it
    already holds)."""
    from hivemem.cli.output import console, emit, open_pool

    zone = Zone(args.zone)
    with open_pool(settings) as pool:
        before = pool.get_agent(args.agent_id).clearance
        target = max(before, zone) if args.grant else min(before, _below(zone))
        info = pool.set_clearance(args.agent_id, target)
    data = {"agent_id": info.agent_id, "clearance": info.clearance.value, "previous": before.value}
    emit(
        args,
        data,
        lambda: console.print(
            f"{info.agent_id}: clearance {before.value} → {info.clearance.value}"
            + (" (unchanged)" if info.clearance == before else " (applies at its next attach)")
        ),
    )
    return 0


def _below(zone: Zone) -> Zone:
    order = list(Zone)
    return order[max(order.index(zone) - 1, 0)]


def register(commands: argparse._SubParsersAction[Any]) -> None:
    from hivemem.cli.output import add_json_flag

    zones = commands.add_parser("zones", help="trust zones and agents' clearances")
    actions = zones.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="the zones, lowest first, and who is cleared")
    add_json_flag(listing)
    listing.set_defaults(handler=_list)
    for name, grant, text in (
        ("grant", True, "raise AGENT's clearance to ZONE (audited)"),
        ("revoke", False, "take ZONE (and above) from AGENT: its clearance drops below ZONE"),
    ):
        action = actions.add_parser(name, help=text)
        action.add_argument("agent_id", metavar="AGENT")
        action.add_argument("zone", metavar="ZONE", choices=_ZONES, help=" < ".join(_ZONES))
        add_json_flag(action)
        action.set_defaults(handler=_change, grant=grant)
