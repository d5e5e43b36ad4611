"""One demo agent in a process of its own, driven by the scenario over a pipe.

The scenario sends ``(operation, arguments)``; the agent answers ``("ok", result)`` or
``("error", error type name, message)``. Results are plain data (they cross the pipe).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.connection
from typing import Any

from hivemem.pool.enums import Zone
from hivemem.pool.errors import HivememError
from hivemem.pool.settings import HivememSettings

_START_TIMEOUT_S = 60.0


def _serve(
    settings_json: str, spec: dict[str, Any], pipe: multiprocessing.connection.Connection
) -> None:
    """The child: register the agent, then answer requests until told to stop."""
    import structlog  # noqa: PLC0415 - configured before the rest is imported

    structlog.configure(logger_factory=structlog.ReturnLoggerFactory())
    from hivemem.demo.operations import Operations  # noqa: PLC0415

    settings = HivememSettings.model_validate_json(settings_json)
    try:
        operations = Operations.open(settings, spec)
    except HivememError as error:
        pipe.send(("error", type(error).__name__, str(error)))
        return
    pipe.send(("ok", spec["agent_id"]))
    with operations:
        while True:
            name, arguments = pipe.recv()
            if name == "stop":
                pipe.send(("ok", None))
                return
            try:
                pipe.send(("ok", getattr(operations, name)(**arguments)))
            except HivememError as error:
                pipe.send(("error", type(error).__name__, str(error)))


class AgentProcess:
    """The scenario's handle on one agent process."""

    def __init__(
        self,
        settings: HivememSettings,
        agent_id: str,
        *,
        clearance: Zone,
        share_levels: list[str],
    ) -> None:
        self.agent_id = agent_id
        self.clearance = clearance
        context = multiprocessing.get_context("spawn")
        self._pipe, child = context.Pipe()
        spec = {"agent_id": agent_id, "clearance": clearance.value, "share_levels": share_levels}
        self._process = context.Process(
            target=_serve,
            args=(settings.model_dump_json(), spec, child),
            name=f"hivemem-demo-{agent_id}",
            daemon=True,
        )
        self._process.start()

    def ready(self) -> None:
        """Wait until the agent registered; raises RuntimeError when it could not."""
        if not self._pipe.poll(_START_TIMEOUT_S):
            raise RuntimeError(f"agent {self.agent_id} did not start")
        answer = self._pipe.recv()
        if answer[0] != "ok":
            raise RuntimeError(f"agent {self.agent_id}: {answer[1]}: {answer[2]}")

    def call(self, operation: str, **arguments: Any) -> Any:
        """Run ``operation`` in the agent; raises RuntimeError carrying the agent's error."""
        self._pipe.send((operation, arguments))
        answer = self._pipe.recv()
        if answer[0] != "ok":
            raise DemoAgentError(answer[1], answer[2])
        return answer[1]

    def stop(self) -> None:
        if self._process.is_alive():
            with contextlib.suppress(EOFError, OSError):
                self.call("stop")
            self._process.join(10)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()


class DemoAgentError(RuntimeError):
    """An operation failed in the agent process (``kind`` is the hivemem error's type)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind
