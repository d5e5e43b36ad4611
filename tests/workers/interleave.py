"""Another worker's step at a chosen moment of a task, on the real stores: :class:`Interleave`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hivemem.pool.ports import ZoneStore


class Interleave:
    """A real store whose method ``method``, on its first call, runs ``hook`` (another worker's
    task, as a second worker on the same stores could run it at that moment) before doing its
    own work on the store, or, with ``after``, once that work is done (between what a task read
    and what it writes next)."""

    def __init__(
        self, store: ZoneStore, method: str, hook: Callable[[], None], *, after: bool = False
    ) -> None:
        self._store = store
        self._method = method
        self._hook = hook
        self._after = after
        self.fired = False

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._store, name)
        if name != self._method:
            return attr

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            if self.fired:
                return attr(*args, **kwargs)
            self.fired = True
            if not self._after:
                self._hook()
                return attr(*args, **kwargs)
            result = attr(*args, **kwargs)
            self._hook()
            return result

        return wrapped
