"""Commands that run things: ``demo``, ``up`` (the embedded stack), ``worker`` and ``beat``."""

from __future__ import annotations

import argparse
from typing import Any

from hivemem.cli.output import positive_int
from hivemem.pool.settings import HivememSettings

#: The log levels Celery accepts (any case).
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL", "FATAL")


def _add_loglevel(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--loglevel",
        type=str.upper,
        choices=LOG_LEVELS,
        default="INFO",
        metavar="LEVEL",
        help=f"Celery log level: {', '.join(LOG_LEVELS)} (default INFO)",
    )


def _demo(args: argparse.Namespace, settings: HivememSettings) -> int:
    from hivemem.demo import run_demo

    return run_demo(settings)


def _queues(value: str) -> str:
    """``--queues``: names of the fleet's queues only (a worker on none of them would report
    ready and consume nothing)."""
    from hivemem.workers.app import QUEUES

    unknown = [name for name in value.split(",") if name not in QUEUES]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown queue(s) {', '.join(map(repr, unknown))}: the queues are {', '.join(QUEUES)}"
        )
    return value


def _up(args: argparse.Namespace, settings: HivememSettings) -> int:
    from hivemem.workers.stack import EmbeddedStack

    with EmbeddedStack(settings, worker_concurrency=args.concurrency) as running:
        running.serve_forever(announce=not args.quiet)
    return 0


def _worker(args: argparse.Namespace, settings: HivememSettings) -> int:
    from hivemem.workers.app import QUEUES, make_app

    queues = args.queues or ",".join(QUEUES)
    argv = [
        "worker",
        f"--concurrency={args.concurrency}",
        f"--queues={queues}",
        f"--pool={args.pool}",
        f"--loglevel={args.loglevel}",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
    ]
    if args.hostname:
        argv.append(f"--hostname={args.hostname}")
    if args.events:
        argv.append("--task-events")
    if args.beat:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        argv += ["--beat", f"--schedule={settings.data_dir / 'celerybeat-schedule'}"]
    app = make_app(settings)
    app.hivemem_runtime.check()  # a bad strategy or policies file fails here, not at a task
    app.worker_main(argv)
    return 0


def _beat(args: argparse.Namespace, settings: HivememSettings) -> int:
    from hivemem.workers.app import make_app

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    schedule = settings.data_dir / "celerybeat-schedule"
    app = make_app(settings)
    app.hivemem_runtime.check()
    app.start(["beat", f"--loglevel={args.loglevel}", f"--schedule={schedule}"])
    return 0


def register(commands: argparse._SubParsersAction[Any]) -> None:
    demo = commands.add_parser(
        "demo",
        help="run the multi-agent demonstration (exit 0 only when every step behaved)",
    )
    demo.set_defaults(handler=_demo)

    up = commands.add_parser(
        "up",
        help="run the embedded stack (Redis, a worker, beat) on HIVEMEM_DATA_DIR until "
        "interrupted; other hivemem commands and pools on this data directory use it",
    )
    up.add_argument(
        "--concurrency", type=positive_int, default=1, help="worker processes (default 1)"
    )
    up.add_argument("--quiet", action="store_true", help="do not print the connection details")
    up.set_defaults(handler=_up)

    worker = commands.add_parser(
        "worker",
        help="run a Celery worker of the fleet (ingest, consolidation, lifecycle) on "
        "HIVEMEM_REDIS_URL; run more of them to scale",
    )
    worker.add_argument(
        "--concurrency", type=positive_int, default=1, help="pool processes (default 1)"
    )
    worker.add_argument(
        "--queues",
        type=_queues,
        default=None,
        help="comma-separated queues (default: ingest,consolidate,lifecycle)",
    )
    worker.add_argument(
        "--pool", default="prefork", choices=["prefork", "solo", "threads"], help="Celery pool"
    )
    worker.add_argument("--hostname", default="", help="node name (default: celery@<host>)")
    worker.add_argument("--beat", action="store_true", help="also run the schedule (one per fleet)")
    worker.add_argument(
        "--events", action="store_true", help="send task events (what Flower's task pages show)"
    )
    _add_loglevel(worker)
    worker.set_defaults(handler=_worker)

    beat = commands.add_parser("beat", help="run the schedule of periodic work (one per fleet)")
    _add_loglevel(beat)
    beat.set_defaults(handler=_beat)
