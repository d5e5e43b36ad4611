"""``hivemem audit``: read and verify the hash-chained audit log (docs/security.md)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from hivemem.pool.errors import InvalidInput
from hivemem.pool.settings import HivememSettings


def _anchor(text: str) -> tuple[int, str]:
    seq, _, digest = text.partition(":")
    if not seq.isdigit() or len(digest) != 64:
        raise argparse.ArgumentTypeError("an anchor is SEQ:SHA256HEX, as `audit head` prints it")
    return int(seq), digest


def _count(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 10_000:
        raise argparse.ArgumentTypeError("a count in 1..10000")
    return int(text)


def _verify(args: argparse.Namespace, settings: HivememSettings) -> int:
    from hivemem.cli.output import console, emit, open_pool
    from hivemem.security.audit import verify_file

    if args.file is not None:
        if not args.file.exists():
            raise InvalidInput(f"no audit file at {args.file}", field="file")
        report = verify_file(args.file, anchor=args.anchor)
    else:
        with open_pool(settings) as pool:
            report = pool.audit.verify(args.anchor)
    problem = report.problem
    data: dict[str, Any] = {
        "ok": report.ok,
        "count": report.count,
        "head": {"seq": report.head.seq, "hash": report.head.hash},
        "problem": None
        if problem is None
        else {
            "kind": problem.kind.value,
            "position": problem.position,
            "seq": problem.seq,
            "message": problem.message,
        },
    }

    def render() -> None:
        if problem is None:
            console.print(
                f"[green]audit log intact[/]: {report.count} entries, head "
                f"{report.head.seq}:{report.head.hash}"
            )
        else:
            console.print(
                f"[red]audit log tampered[/]: {problem.kind.value} at position "
                f"{problem.position} (seq {problem.seq}): {problem.message}"
            )

    emit(args, data, render)
    return 0 if report.ok else 1


def _tail(args: argparse.Namespace, settings: HivememSettings) -> int:
    from hivemem.cli.output import emit, open_pool, table

    with open_pool(settings) as pool:
        entries = pool.audit.tail(args.n)
    rows = [
        [e.seq, e.ts.isoformat(timespec="seconds"), e.kind, e.actor, e.subject, e.zone or "",
         ", ".join(f"{k}={v}" for k, v in sorted(e.details.items()))]
        for e in entries
    ]  # fmt: skip
    emit(
        args,
        [e.record() for e in entries],
        lambda: table(
            "Audit log", ["seq", "time", "event", "actor", "subject", "zone", "details"], rows
        ),
    )
    return 0


def _head(args: argparse.Namespace, settings: HivememSettings) -> int:
    from hivemem.cli.output import emit, open_pool

    with open_pool(settings) as pool:
        head = pool.audit.head()
    emit(args, {"seq": head.seq, "hash": head.hash}, lambda: print(f"{head.seq}:{head.hash}"))
    return 0


def register(commands: argparse._SubParsersAction[Any]) -> None:
    from hivemem.cli.output import add_json_flag

    audit = commands.add_parser("audit", help="read and verify the tamper-evident audit log")
    actions = audit.add_subparsers(dest="action", required=True, metavar="ACTION")
    verify = actions.add_parser(
        "verify",
        help="check the hash chain; exit 1 and say where when an entry was edited, removed "
        "or reordered",
    )
    verify.add_argument(
        "--anchor", type=_anchor, help="a head recorded earlier (SEQ:HASH): detects a rewrite"
    )
    verify.add_argument("--file", type=Path, help="verify a JSONL copy instead of Redis")
    add_json_flag(verify)
    verify.set_defaults(handler=_verify)
    tail = actions.add_parser("tail", help="the last entries")
    tail.add_argument("-n", type=_count, default=20, help="how many (default 20)")
    add_json_flag(tail)
    tail.set_defaults(handler=_tail)
    head = actions.add_parser("head", help="the current head (SEQ:HASH), to keep as an anchor")
    add_json_flag(head)
    head.set_defaults(handler=_head)
