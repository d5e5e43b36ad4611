"""Helpers shared by the two-process bench scripts (``sync.py``, ``security.py``): quiet logs,
the synthetic record texts, an embedder whose vectors are computed before the timed parts, the
queue of a peer process's reports, and the facts about the machine that go in each summary.

Not a benchmark of its own: this folder is on sys.path when a bench script runs, so the scripts
import it as ``common``.
"""

from __future__ import annotations

import logging
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import redis
import structlog

# The word lists of the latency benchmark.
from latency import PEOPLE, THINGS, VERBS

#: How long :meth:`Events.wait` waits for a report by default (s).
EVENT_TIMEOUT_S = 5.0


def quiet_logs() -> None:
    """hivemem logs with structlog (stdout by default): warnings only, on stderr."""
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )


def text_of(i: int) -> str:
    """The ``i``-th synthetic record text (a person, a verb, a thing; distinct for each ``i``)."""
    person = PEOPLE[i % len(PEOPLE)]
    verb = VERBS[(i // len(PEOPLE)) % len(VERBS)]
    thing = THINGS[(i // (len(PEOPLE) * len(VERBS))) % len(THINGS)]
    return f"{person} {verb} {thing} (note {i})"


class CachedEmbedder:
    """The real embedder behind a cache of texts embedded before the timed parts."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.model_id: str = inner.model_id
        self.dim: int = inner.dim
        self._rows: dict[str, npt.NDArray[np.float32]] = {}

    def preload(self, texts: Sequence[str]) -> None:
        missing = [t for t in dict.fromkeys(texts) if t not in self._rows]
        for text, row in zip(missing, self._inner.embed_documents(missing), strict=True):
            self._rows[text] = row

    def embed_documents(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        self.preload(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([self._rows[t] for t in texts])

    def embed_query(self, text: str) -> npt.NDArray[np.float32]:
        return np.asarray(self._inner.embed_query(text), dtype=np.float32)


class Events:
    """The peer's reports, matched by kind (and key) whatever order they arrive in."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self._early: list[tuple[Any, ...]] = []

    def wait(
        self, match: Callable[[tuple[Any, ...]], bool], timeout_s: float = EVENT_TIMEOUT_S
    ) -> tuple[Any, ...] | None:
        for i, event in enumerate(self._early):
            if match(event):
                return self._early.pop(i)
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            if not self._connection.poll(left):
                break
            event = self._connection.recv()
            if match(event):
                return event  # type: ignore[no-any-return]
            self._early.append(event)
        return None

    def kind(self, name: str, timeout_s: float = EVENT_TIMEOUT_S) -> tuple[Any, ...]:
        event = self.wait(lambda e: e[0] == name, timeout_s)
        if event is None:
            raise TimeoutError(f"the peer did not report {name!r} within {timeout_s} s")
        return event


def machine_facts(client: redis.Redis) -> dict[str, Any]:
    """CPU, platform, Python and Redis versions (``client``'s server), for the JSON summary."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = client.info("server")  # type: ignore[assignment]
    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": model,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "redis_server": info.get("redis_version"),
        "redis_py": redis.__version__,
    }
