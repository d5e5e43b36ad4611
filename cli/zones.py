"""``hivemem zones``: the trust zones, agents' clearances, and the zones' data keys (the workers'
ingest keys: :mod:`hivemem.cli.ingest_keys`)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from hivemem.cli import ingest_keys
from hivemem.pool.compartments import compartment_names
from hivemem.pool.enums import Zone, checked_zone, zone_names
from hivemem.pool.errors import InvalidInput, KeyUnavailable
from hivemem.pool.settings import HivememSettings

if TYPE_CHECKING:
    from hivemem.pool.shared import SharedMemoryPool


class UnknownKey(InvalidInput):
    """Raised when ``zones retire-key`` names a well-formed key id that the zone never had:
    a usage error, like naming an unknown agent (exit 2); nothing changed."""

    def __init__(self, zone: str, key_id: str) -> None:
        super().__init__(
            f"zone {zone} has no key {key_id} (`hivemem zones keys {zone}` lists them)",
            field="key_id",
        )
        self.zone = zone
        self.key_id = key_id


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
            + (" (unchanged)" if info.clearance == before else "")
        ),
    )
    return 0


def _compartments(args: argparse.Namespace, settings: HivememSettings) -> int:
    """Give AGENT exactly the compartments named (none: take them all away)."""
    from hivemem.cli.output import console, emit, open_pool

    with open_pool(settings) as pool:
        before = pool.get_agent(args.agent_id).compartments
        info = pool.set_compartments(args.agent_id, args.compartments)
    data = {"agent_id": info.agent_id, "compartments": info.compartments, "previous": before}
    emit(
        args,
        data,
        lambda: console.print(
            f"{info.agent_id}: compartments {','.join(before) or '-'} → "
            f"{','.join(info.compartments) or '-'}"
        ),
    )
    return 0


def _chosen(names: list[str]) -> list[Zone]:
    """The zones named (InvalidInput for an unknown one), every zone when none is."""
    return [checked_zone(name) for name in names] if names else list(Zone)


def _key_rows(pool: SharedMemoryPool, zones: list[Zone]) -> list[dict[str, Any]]:
    """Each zone's keys, and for the ones neither active nor retired, who is still behind."""
    rows = []
    for zone in zones:
        holders = pool.key_holders(zone)
        for info in pool.zone_keys(zone):
            old = not info.active and not info.retired
            rows.append(
                {
                    "zone": zone.value,
                    "key_id": info.key_id,
                    "created_at": info.created_at.isoformat(timespec="seconds"),
                    "state": "active" if info.active else "retired" if info.retired else "old",
                    "behind": pool.rotation.behind(zone, info.key_id, holders)
                    if old and pool.rotation is not None
                    else [],
                }
            )
    return rows


def _show_keys(title: str, rows: list[dict[str, Any]]) -> None:
    from hivemem.cli.output import table

    shown = [
        [r["zone"], r["key_id"], r["created_at"], r["state"], ", ".join(r["behind"]) or "-"]
        for r in rows
    ]
    table(title, ["zone", "key", "created", "state", "not re-sealed yet"], shown)


def _keys(args: argparse.Namespace, settings: HivememSettings) -> int:
    from hivemem.cli.output import emit, open_pool

    zones = _chosen(args.zones)
    with open_pool(settings) as pool:
        rows = _key_rows(pool, zones)
    emit(args, rows, lambda: _show_keys("Zone data keys", rows))
    return 0


def _rotate(args: argparse.Namespace, settings: HivememSettings) -> int:
    """A new active key per zone; then the workers re-seal the zone store and its archive under
    it (waited for unless --no-wait, which only queues it). Agents re-seal their local stores
    at their next heartbeat."""
    from hivemem.cli.output import console, emit, open_pool
    from hivemem.workers.fleet import Fleet

    zones = _chosen(args.zones)
    resealed: dict[str, int] = {}
    with open_pool(settings) as pool:
        for zone in zones:
            pool.rotate_key(zone)
        with Fleet(settings.model_copy(update={"redis_url": pool.redis_url})) as fleet:
            for zone in zones:
                if args.wait:
                    resealed[zone.value] = fleet.reseal(zone, timeout_s=args.timeout).records
                else:
                    fleet.queue_reseal(zone)
        rows = _key_rows(pool, zones)

    def render() -> None:
        _show_keys("Rotated", rows)
        if resealed:
            console.print(f"zone store re-sealed: {resealed}")
        console.print(
            "Agents re-seal their local stores at their next heartbeat; retire an old key with "
            "`hivemem zones retire-key ZONE KEY` once nobody is behind."
        )

    emit(args, {"keys": rows, "zone_store_resealed": resealed}, render)
    return 0


def _retire(args: argparse.Namespace, settings: HivememSettings) -> int:
    from hivemem.cli.output import console, emit, open_pool

    zone = Zone(args.zone)
    with open_pool(settings) as pool:
        try:
            behind = pool.retire_key(zone, args.key_id, force=args.force)
        except KeyUnavailable as error:
            # KeyUnavailable names the key asked for when the zone does not have it; of another
            # key (the active one, broken), it is a failure of the pool, not of the command line.
            if error.key_id != args.key_id:
                raise
            raise UnknownKey(zone.value, args.key_id) from None
    data = {"zone": zone.value, "key_id": args.key_id, "retired": True, "behind": behind}
    emit(
        args,
        data,
        lambda: console.print(
            f"retired key {args.key_id} of {zone.value}"
            + (f" (forced: {', '.join(behind)} lost what it kept under it)" if behind else "")
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
        # The zones are the configured ones: main() builds the settings before the parser.
        choices = zone_names()
        action.add_argument("zone", metavar="ZONE", choices=choices, help=" < ".join(choices))
        add_json_flag(action)
        action.set_defaults(handler=_change, grant=grant)
    held = actions.add_parser(
        "compartments",
        help="give AGENT exactly the compartments named, none to take all away (audited)",
    )
    held.add_argument("agent_id", metavar="AGENT")
    names = compartment_names()
    # No argparse choices: with nargs="*" it refuses the empty list. The pool checks the names.
    held.add_argument(
        "compartments", nargs="*", metavar="COMPARTMENT", help=", ".join(names) or "none configured"
    )
    add_json_flag(held)
    held.set_defaults(handler=_compartments)
    _register_keys(actions)
    ingest_keys.register(actions)


def _register_keys(actions: argparse._SubParsersAction[Any]) -> None:
    from hivemem.cli.output import add_json_flag, seconds

    zone_help = "zones (default: all): " + " < ".join(zone_names())
    keys = actions.add_parser("keys", help="the zones' data keys and who has not re-sealed yet")
    # No argparse choices: with nargs="*" it refuses the empty list (every zone). _chosen checks.
    keys.add_argument("zones", nargs="*", metavar="ZONE", help=zone_help)
    add_json_flag(keys)
    keys.set_defaults(handler=_keys)
    rotate = actions.add_parser(
        "rotate-keys",
        help="new data keys for ZONEs (audited); the workers re-seal the zone store under them "
        "(needs a running worker unless --no-wait)",
    )
    rotate.add_argument("zones", nargs="*", metavar="ZONE", help=zone_help)
    rotate.add_argument(
        "--no-wait", dest="wait", action="store_false",
        help="queue the workers' re-seal and return at once",
    )  # fmt: skip
    rotate.add_argument(
        "--timeout",
        type=seconds,
        default=300.0,
        metavar="SECONDS",
        help="how long to wait per zone (default 300)",
    )
    add_json_flag(rotate)
    rotate.set_defaults(handler=_rotate)
    retire = actions.add_parser(
        "retire-key",
        help="delete an old data key for good (audited); refused while someone has not re-sealed",
    )
    retire.add_argument("zone", metavar="ZONE", choices=zone_names())
    retire.add_argument("key_id", metavar="KEY")
    retire.add_argument(
        "--force", action="store_true",
        help="retire even though holders are behind: what they keep under it is lost",
    )  # fmt: skip
    add_json_flag(retire)
    retire.set_defaults(handler=_retire)
