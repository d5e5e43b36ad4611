"""``hivemem forget USER``: forget a user everywhere, through the worker fleet."""

from __future__ import annotations

import argparse
from typing import Any

from hivemem.pool.settings import HivememSettings


def _forget(args: argparse.Namespace, settings: HivememSettings) -> int:
    from hivemem.cli.output import emit, open_pool, table
    from hivemem.workers.fleet import Fleet

    with open_pool(settings) as pool:
        fleet_settings = settings.model_copy(update={"redis_url": pool.redis_url})
        with Fleet(fleet_settings) as fleet:
            receipt = fleet.forget_user(args.user_id, timeout_s=args.timeout)
    rows = [
        [zone, part.live_records, part.archived_records, part.tombstones_published]
        for zone, part in receipt.zones.items()
    ]
    emit(
        args,
        receipt.model_dump(mode="json"),
        lambda: table(
            f"forgot {args.user_id}: {receipt.removed} records",
            ["zone", "live records", "archived", "tombstones sent"],
            rows,
        ),
    )
    return 0


def register(commands: argparse._SubParsersAction[Any]) -> None:
    from hivemem.cli.output import add_json_flag, seconds

    forget = commands.add_parser(
        "forget",
        help="forget USER everywhere: every zone store and archive, the workers' state, and "
        "(by tombstones) every agent's copies; prints the receipt (needs a running worker)",
    )
    forget.add_argument("user_id", metavar="USER")
    forget.add_argument(
        "--timeout",
        type=seconds,
        default=60.0,
        metavar="SECONDS",
        help="how long to wait for the worker (default 60)",
    )
    add_json_flag(forget)
    forget.set_defaults(handler=_forget)
