"""The ``hivemem`` entry point: builds the parser from the command modules and maps errors to
exit codes.

Exit codes: 0 success; 1 an operation failed or a check did not pass (a service unreachable, a
verify that found tampering); 2 bad usage or input (unknown command, invalid value, unknown
agent or memory); 130 interrupted.

Each command module has ``register(commands)``, which adds its sub-commands with a ``handler``
taking ``(args, settings)`` and returning the exit code. Modules import their machinery inside
the handlers, so ``hivemem --help`` starts fast.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence

import structlog
from pydantic import ValidationError

from hivemem import __version__
from hivemem.cli import agents, audit, forget, memory, stack, transfer, zones
from hivemem.pool.errors import AgentNotFound, HivememError, InvalidInput, MemoryNotFound
from hivemem.pool.settings import HivememSettings

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
#: Signals that end a command as Ctrl-C does (its clean-up runs: no partial export, the agent
#: detached), exiting 128 + the signal's number. ``up`` and ``worker`` install their own.
_ENDING_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class _Signalled(KeyboardInterrupt):
    """A command ended by one of _ENDING_SIGNALS."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _end_on_signal(signum: int, frame: object) -> None:
    del frame
    raise _Signalled(signum)


_GROUPS = (stack, agents, zones, memory, forget, transfer, audit)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hivemem",
        description="A memory pool for teams of AI agents. Settings come from HIVEMEM_* "
        "environment variables (see the README's configuration reference).",
    )
    parser.add_argument("--version", action="version", version=f"hivemem {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in _GROUPS:
        group.register(commands)
    return parser


#: Commands that run services print their logs at INFO; the others only warnings and errors.
_SERVICES = {"up", "worker", "beat"}


def _logging(command: str) -> None:
    """Logs go to standard error, so that standard output holds only what a command prints
    (``--json`` documents, ids for ``$(...)``)."""
    level = logging.INFO if command in _SERVICES else logging.WARNING
    processors = structlog.get_config()["processors"][:-1]
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        # A traceback, if anything logs one, without the frames' variables (plaintext).
        processors=[
            *processors,
            structlog.dev.ConsoleRenderer(exception_formatter=structlog.dev.plain_traceback),
        ],
    )


def main(argv: Sequence[str] | None = None) -> int:
    try:
        # Before the parser: the settings install the configured zones, its zone choices.
        settings = HivememSettings()
    except ValidationError as exc:  # never the inputs: a setting may hold a secret
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors(include_input=False)
        )
        print(f"hivemem: bad HIVEMEM_* settings: {problems}", file=sys.stderr)
        return EXIT_USAGE
    args = _parser().parse_args(argv)
    _logging(args.command)
    previous = {s: signal.signal(s, _end_on_signal) for s in _ENDING_SIGNALS}
    try:
        code: int = args.handler(args, settings)
    except (InvalidInput, AgentNotFound, MemoryNotFound) as exc:
        print(f"hivemem: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except HivememError as exc:
        print(f"hivemem: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except _Signalled as ended:
        return 128 + ended.signum
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return code


if __name__ == "__main__":
    sys.exit(main())
