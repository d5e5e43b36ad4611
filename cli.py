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
