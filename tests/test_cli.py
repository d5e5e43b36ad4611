"""The hivemem command line."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest


def _hivemem(*args: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HIVEMEM_DATA_DIR": str(data_dir), "COLUMNS": "120"}
    command = [sys.executable, "-m", "hivemem.cli", *args]
    return subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=300, check=False
    )


def test_help_lists_the_commands(tmp_path: Path) -> None:
    """`hivemem --help` exits 0 and names every command group."""
    done = _hivemem("--help", data_dir=tmp_path)
    assert done.returncode == 0
    for command in ("demo", "up", "worker", "beat", "agents", "memory", "audit"):
        assert command in done.stdout


def test_an_unknown_command_is_a_usage_error(tmp_path: Path) -> None:
    """An unknown command exits 2 with a message on stderr."""
    done = _hivemem("dance", data_dir=tmp_path)
    assert done.returncode == 2
    assert "invalid choice" in done.stderr


@pytest.mark.slow
def test_the_demo_passes_every_check(tmp_path: Path) -> None:
    """`hivemem demo` runs the scenario and exits 0 with every check passed; the URL of its
    Redis shows with the password hidden, and no URL with a password shows."""
    done = _hivemem("demo", data_dir=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    counted = re.search(r"(\d+)/(\d+) checks passed", done.stdout)
    assert counted is not None, done.stdout
    assert counted[1] == counted[2]
    assert int(counted[2]) >= 15
    assert "redis://:***@127.0.0.1:" in done.stdout
    assert not re.search(r"redis://[^@\s]*:(?!\*\*\*@)[^@\s]+@", done.stdout + done.stderr)
