"""``hivemem zones ingest-keys``, ``rotate-ingest-key`` and ``retire-ingest-key``: the workers'
ingest keys, which agents seal their ingest queues to (docs/security.md)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from hivemem.pool.errors import InvalidInput, KeyUnavailable
from hivemem.pool.settings import HivememSettings

if TYPE_CHECKING:
    from hivemem.pool.shared import SharedMemoryPool


class UnknownIngestKey(InvalidInput):
    """Raised when ``zones retire-ingest-key`` names a well-formed id the pool never had: a
    usage error (exit 2); nothing changed."""

    def __init__(self, key_id: str) -> None:
        super().__init__(
            f"no workers' ingest key {key_id} (`hivemem zones ingest-keys` lists them)",
            field="key_id",
        )
        self.key_id = key_id


def _rows(pool: SharedMemoryPool) -> list[dict[str, Any]]:
    """The ingest keys, and for the old ones what a retirement would still wait for."""
    rows = []
    for info in pool.ingest_keys():
        old = not info.current and not info.retired
        rows.append(
            {
                "key_id": info.key_id,
                "created_at": info.created_at.isoformat(timespec="seconds"),
                "state": "current" if info.current else "retired" if info.retired else "old",
                "replaced_at": None
                if info.replaced_at is None
                else info.replaced_at.isoformat(timespec="seconds"),
                "behind": pool.ingest_key_behind(info.key_id) if old else [],
            }
        )
    return rows


def _show(title: str, rows: list[dict[str, Any]]) -> None:
    from hivemem.cli.output import table

    shown = [
        [r["key_id"], r["created_at"], r["state"], ", ".join(r["behind"]) or "-"] for r in rows
    ]
    table(title, ["key", "created", "state", "still needed by"], shown)


def _list(args: argparse.Namespace, settings: HivememSettings) -> int:
    from hivemem.cli.output import emit, open_pool

    with open_pool(settings) as pool:
        rows = _rows(pool)
    emit(args, rows, lambda: _show("Workers' ingest keys", rows))
    return 0


def _rotate(args: argparse.Namespace, settings: HivememSettings) -> int:
    from hivemem.cli.output import console, emit, open_pool

    with open_pool(settings) as pool:
        pool.rotate_ingest_key()
        rows = _rows(pool)

    def render() -> None:
        _show("Rotated", rows)
        grace = settings.security.ingest_retire_grace_s
        console.print(
            "Agents seal to the new key within a second; retire the old one with "
            "`hivemem zones retire-ingest-key KEY` once nothing needs it (at the earliest "
            f"security.ingest_retire_grace_s, {grace:g} s, after the rotation)."
        )

    emit(args, rows, render)
    return 0


def _retire(args: argparse.Namespace, settings: HivememSettings) -> int:
    from hivemem.cli.output import console, emit, open_pool

    with open_pool(settings) as pool:
        try:
            behind = pool.retire_ingest_key(args.key_id, force=args.force)
        except KeyUnavailable as error:
            if error.key_id != args.key_id:
                raise
            raise UnknownIngestKey(args.key_id) from None
    data = {"key_id": args.key_id, "retired": True, "behind": behind}
    lost = f" (forced: {', '.join(behind)} lost what needed it)" if behind else ""
    emit(args, data, lambda: console.print(f"retired workers' ingest key {args.key_id}{lost}"))
    return 0


def register(actions: argparse._SubParsersAction[Any]) -> None:
    """The three commands, under ``hivemem zones``."""
    from hivemem.cli.output import add_json_flag

    listing = actions.add_parser(
        "ingest-keys", help="the workers' ingest keys and what still needs the old ones"
    )
    add_json_flag(listing)
    listing.set_defaults(handler=_list)
    rotate = actions.add_parser(
        "rotate-ingest-key",
        help="a new workers' ingest key (audited); agents seal their queues to it",
    )
    add_json_flag(rotate)
    rotate.set_defaults(handler=_rotate)
    retire = actions.add_parser(
        "retire-ingest-key",
        help="delete an old workers' ingest key for good (audited); refused while it is needed",
    )
    retire.add_argument("key_id", metavar="KEY")
    retire.add_argument(
        "--force", action="store_true",
        help="retire even so: the writes still queued under it are lost",
    )  # fmt: skip
    add_json_flag(retire)
    retire.set_defaults(handler=_retire)
