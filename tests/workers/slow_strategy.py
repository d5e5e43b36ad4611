"""A consolidation strategy for the fault tests: the offline one, but it leaves a marker file
and pauses before making traces, so a test can kill the worker in the middle of a run."""

from __future__ import annotations

import os
import time
from pathlib import Path

from hivemem.pool.settings import ConsolidationSettings
from hivemem.workers.offline import OfflineStrategy
from hivemem.workers.strategy import Draft, Sources

#: Environment: the directory for marker files, and the pause in seconds.
MARKERS = "HIVEMEM_TEST_MARKERS"
PAUSE = "HIVEMEM_TEST_PAUSE_S"


class SlowStrategy(OfflineStrategy):
    name = "slow"

    def __init__(self, settings: ConsolidationSettings) -> None:
        super().__init__(settings)

    def traces(self, episodes: Sources) -> list[Draft]:
        markers = Path(os.environ[MARKERS])
        (markers / f"started-{os.getpid()}-{time.monotonic_ns()}").touch()
        time.sleep(float(os.environ.get(PAUSE, "3")))
        return super().traces(episodes)
