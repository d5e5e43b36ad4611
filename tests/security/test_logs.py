"""What hivemem logs of the errors it catches and goes on after holds no plaintext, even with
structlog's default renderer, whose rich tracebacks show every frame's variables."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import structlog

from hivemem.pool.enums import Level, Zone
from hivemem.pool.errors import InvalidInput
from hivemem.pool.failures import described
from hivemem.pool.records import MemoryRecord
from hivemem.pool.shared import SharedMemoryPool
from tests.waiting import wait_for

SECRET = "the vault code is 7-7-ALPHA"


@pytest.fixture
def logged() -> Iterator[io.StringIO]:
    """Everything logged during the test, rendered by structlog's defaults."""
    saved = structlog.get_config()
    structlog.reset_defaults()
    out = io.StringIO()
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=out))
    yield out
    structlog.configure(**saved)


def test_a_failing_listener_is_logged_without_the_records_it_was_given(
    make_pool: Callable[..., SharedMemoryPool], logged: io.StringIO
) -> None:
    """bob's listener raises with the record's content in its message and in its variables;
    the log names the failure and where it was raised, and holds neither."""
    alice = make_pool("p1").register_agent(
        "alice", clearance=Zone.INTERNAL, share_levels=[Level.CATEGORY]
    )
    bob = make_pool("p2").register_agent("bob", clearance=Zone.INTERNAL)
    assert alice.wait_connected()
    assert bob.wait_connected()
    calls: list[str] = []

    def listener(records: list[MemoryRecord]) -> None:
        content = records[0].content
        calls.append(content)
        raise ValueError(f"cannot use {content}")

    bob.on_receive(listener)
    alice.memory.add(SECRET, user_id="u1", level=Level.CATEGORY, zone=Zone.INTERNAL)
    assert wait_for(lambda: "pool_listener_failed" in logged.getvalue())
    assert calls == [SECRET]
    text = logged.getvalue()
    assert "ValueError" in text
    assert "listener" in text  # where it was raised
    assert "7-7-ALPHA" not in text


def test_described_keeps_only_hivemem_and_os_messages(tmp_path: Path) -> None:
    """The message of an error of hivemem's (which never quotes content) or the OS's is kept;
    any other is left out, its type and place kept."""

    def caught(error: Exception) -> dict[str, str]:
        try:
            raise error  # noqa: TRY301 - a traceback to describe
        except Exception as raised:  # noqa: BLE001 - what is logged of it is the subject here
            return described(raised)

    fields = [
        caught(InvalidInput("limit must be an integer", field="limit")),
        caught(KeyError(SECRET)),
        caught(FileNotFoundError(2, "No such file", str(tmp_path / "x"))),
    ]
    assert fields[0]["error"] == "limit must be an integer"
    assert fields[1] == {"error_type": "KeyError", "raised_at": fields[1]["raised_at"]}
    assert "test_logs.py:" in fields[1]["raised_at"]
    assert "No such file" in fields[2]["error"]
