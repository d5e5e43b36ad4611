"""Running the ``hivemem`` command line in this process, against the test's real Redis.

Every call builds its settings from the environment, as the console script does. The data
directory is the session's (so the embedder, keyed by it, loads once per session); agent ids
carry a per-test suffix, so that no two tests share an agent's memory directory.
"""

from __future__ import annotations

import json
import shutil
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import structlog

from hivemem.cli.main import main
from hivemem.pool.redis_server import EmbeddedRedis


@dataclass(frozen=True)
class Done:
    """What one command did: its exit code and what it printed."""

    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


Run = Callable[..., Done]


@pytest.fixture(autouse=True)
def _logs_on_stderr() -> Iterator[None]:
    """Route structlog to standard error (whichever stream is current at the call) so that
    standard output holds only what a command prints."""
    saved = structlog.get_config()
    structlog.configure(logger_factory=lambda *_: structlog.PrintLogger(sys.stderr))
    yield
    structlog.configure(**saved)


@pytest.fixture
def agent_id(data_dir: Path) -> Iterator[Callable[[str], str]]:
    """``agent_id("alice")``: an agent id unique to this test; its memory directory is removed
    at teardown."""
    suffix = uuid.uuid4().hex[:8]
    made: list[str] = []

    def make(name: str) -> str:
        made.append(f"{name}-{suffix}")
        return made[-1]

    yield make
    for name in made:
        shutil.rmtree(data_dir / "agents" / name, ignore_errors=True)


def _runner(capsys: pytest.CaptureFixture[str]) -> Run:
    def run(*argv: str) -> Done:
        capsys.readouterr()
        try:
            code = main(list(argv))
        except SystemExit as stop:  # argparse: --help, or bad usage
            code = stop.code if isinstance(stop.code, int) else 1
        out, err = capsys.readouterr()
        return Done(code, out, err)

    return run


@pytest.fixture
def offline(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> Run:
    """``offline("memory", "--help")`` runs the command line in this process with no pool
    (for what needs none: help, usage errors) and returns a Done."""
    monkeypatch.setenv("HIVEMEM_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("HIVEMEM_REDIS_URL", raising=False)
    return _runner(capsys)


@pytest.fixture
def hivemem(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    redis_server: EmbeddedRedis,
    data_dir: Path,
) -> Run:
    """``hivemem("memory", "add", ...)`` runs the command line in this process on the test's
    Redis and returns a Done (argparse's exits included)."""
    monkeypatch.setenv("HIVEMEM_DATA_DIR", str(data_dir))
    monkeypatch.setenv("HIVEMEM_REDIS_URL", redis_server.url)
    return _runner(capsys)
