"""The ``hivemem`` command line. Commands grow with the project; each has ``--help``.

Exit codes: 0 success, 1 a check or operation failed, 2 bad usage or input.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from hivemem import __version__
from hivemem.pool.errors import HivememError, InvalidInput
from hivemem.pool.settings import HivememSettings


def _demo(args: argparse.Namespace, settings: HivememSettings) -> int:
    from hivemem.demo import run_demo

    return run_demo(settings)


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
    if args.beat:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        argv += ["--beat", f"--schedule={settings.data_dir / 'celerybeat-schedule'}"]
    make_app(settings).worker_main(argv)
    return 0


def _beat(args: argparse.Namespace, settings: HivememSettings) -> int:
    from hivemem.workers.app import make_app

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    schedule = settings.data_dir / "celerybeat-schedule"
    make_app(settings).start(["beat", f"--loglevel={args.loglevel}", f"--schedule={schedule}"])
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hivemem", description="A memory pool for teams of AI agents."
    )
    parser.add_argument("--version", action="version", version=f"hivemem {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo", help="run the demonstration scenario (exit 0 when it behaved)"
    )
    demo.set_defaults(handler=_demo)

    worker = commands.add_parser(
        "worker",
        help="run a Celery worker of the fleet (ingest, consolidation, lifecycle) on "
        "HIVEMEM_REDIS_URL; run more of them to scale",
    )
    worker.add_argument("--concurrency", type=int, default=1, help="pool processes (default 1)")
    worker.add_argument(
        "--queues",
        default="",
        help="comma-separated queues (default: ingest,consolidate,lifecycle)",
    )
    worker.add_argument(
        "--pool", default="prefork", choices=["prefork", "solo", "threads"], help="Celery pool"
    )
    worker.add_argument("--hostname", default="", help="node name (default: celery@<host>)")
    worker.add_argument("--beat", action="store_true", help="also run the schedule (one per fleet)")
    worker.add_argument("--loglevel", default="INFO", help="Celery log level")
    worker.set_defaults(handler=_worker)

    beat = commands.add_parser("beat", help="run the schedule of periodic work (one per fleet)")
    beat.add_argument("--loglevel", default="INFO", help="Celery log level")
    beat.set_defaults(handler=_beat)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = HivememSettings()
        code: int = args.handler(args, settings)
    except InvalidInput as exc:
        print(f"hivemem: {exc}", file=sys.stderr)
        return 2
    except HivememError as exc:
        print(f"hivemem: {exc}", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
