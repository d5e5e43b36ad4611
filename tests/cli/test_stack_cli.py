"""``hivemem up``, ``worker`` and ``beat``: what they refuse before starting anything."""

from __future__ import annotations

from pathlib import Path

from hivemem.cli.main import _parser
from tests.cli.conftest import Run

_BAD_COUNTS = ("-5", "0", "1.5", "many")


def test_a_worker_concurrency_must_be_a_positive_count(hivemem: Run) -> None:
    """worker --concurrency below 1 or no whole number exits 2 with argparse's message, before
    Celery is started (it used to end in a Celery traceback)."""
    for value in _BAD_COUNTS:
        done = hivemem("worker", "--concurrency", value)
        assert done.code == 2, value
        assert "argument --concurrency: " in done.err, (value, done.err)
        assert "Traceback" not in done.err


def test_a_worker_queue_must_be_one_of_hivemems(hivemem: Run) -> None:
    """worker --queues with a name that is no queue of ours exits 2 naming it and the queues,
    before Celery starts (it reported ready and consumed nothing)."""
    done = hivemem("worker", "--queues", "ingest,bogus", "--pool", "solo")
    assert done.code == 2
    assert "unknown queue(s) 'bogus': the queues are ingest, consolidate, lifecycle" in done.err


def test_up_checks_its_concurrency_before_starting_redis(offline: Run, tmp_path: Path) -> None:
    """up --concurrency below 1 or no whole number exits 2 before the stack starts: no Redis
    is started on the data directory (it used to start Redis, then fail)."""
    for value in _BAD_COUNTS:
        done = offline("up", "--concurrency", value)
        assert done.code == 2, value
        assert "argument --concurrency: " in done.err, (value, done.err)
    assert not (tmp_path / "redis").exists()
    assert not (tmp_path / "stack.json").exists()


def test_a_log_level_is_one_of_celerys(hivemem: Run) -> None:
    """--loglevel outside DEBUG, INFO, WARNING, ERROR, CRITICAL, FATAL exits 2 and lists them;
    a level in any case is accepted (Celery's rule)."""
    for command in ("worker", "beat"):
        done = hivemem(command, "--loglevel", "bogus")
        assert done.code == 2, command
        assert "argument --loglevel: invalid choice: 'BOGUS'" in done.err
        assert "'DEBUG', 'INFO', 'WARNING', 'ERROR', 'CRITICAL', 'FATAL'" in done.err
        assert _parser().parse_args([command, "--loglevel", "debug"]).loglevel == "DEBUG"
    shown = hivemem("worker", "--help")
    assert shown.code == 0
    help_text = " ".join(shown.out.split())
    assert "DEBUG, INFO, WARNING, ERROR, CRITICAL, FATAL (default INFO)" in help_text
