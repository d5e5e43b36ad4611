"""Embedding a bulk add's chunks ahead of indexing them: see :class:`EmbeddingQueue`."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

from hivemem.pool.ports import Vector
from hivemem.pool.records import MemoryRecord


class EmbeddingQueue:
    """Chunks embedded in order on the memory's embedding thread (onnxruntime releases the
    GIL), so that validating and indexing here overlap the embedding of later chunks. At most
    ``ahead`` chunks are submitted and unfinished at a time: another caller's embedding waits
    behind no more than that."""

    def __init__(
        self,
        pool: ThreadPoolExecutor,
        work: Callable[[list[MemoryRecord]], tuple[list[MemoryRecord], Vector]],
        ahead: int = 2,
    ) -> None:
        self._pool = pool
        self._work = work
        self._ahead = ahead
        self._waiting: deque[list[MemoryRecord]] = deque()
        self._submitted: deque[Future[tuple[list[MemoryRecord], Vector]]] = deque()

    def put(self, chunk: list[MemoryRecord]) -> None:
        self._waiting.append(chunk)
        self._top_up()

    def _top_up(self) -> None:
        while self._waiting and sum(not f.done() for f in self._submitted) < self._ahead:
            self._submitted.append(self._pool.submit(self._work, self._waiting.popleft()))

    def results(self) -> Iterator[tuple[list[MemoryRecord], Vector]]:
        """Each chunk with its sparse terms, and its dense vectors, in the order put."""
        while self._submitted or self._waiting:
            self._top_up()
            done = self._submitted.popleft().result()
            self._top_up()
            yield done

    def cancel(self) -> None:
        """Drop what was not embedded yet (after an error)."""
        self._waiting.clear()
        for future in self._submitted:
            future.cancel()
