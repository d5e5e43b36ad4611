"""Conditional writes on a Qdrant server, as the re-seal makes them
(:class:`~hivemem.pool.ports.ResealableZoneStore`): per point, a payload set and a delete of the
keys the new payload leaves out, each applied by the server only to the point while it holds a
given value, checked as the server applies the write (updates to a shard apply one at a time).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from qdrant_client import models

#: Operations per request at most.
_OPERATIONS = 256
#: About how many characters of payload and conditions a request carries at most (the server
#: refuses requests above 32 MB by default).
_REQUEST_CHARS = 8 * 1024 * 1024

Operation = models.SetPayloadOperation | models.DeletePayloadOperation


def holding(record_id: str, key: str, value: str) -> models.Filter:
    """The point ``record_id`` while its payload ``key`` is ``value``."""
    return models.Filter(
        must=[
            models.HasIdCondition(has_id=[record_id]),
            models.FieldCondition(key=key, match=models.MatchValue(value=value)),
        ]
    )


@dataclass(frozen=True, slots=True)
class Swap:
    """Point ``record_id``'s payload ``key`` from ``before`` to ``payload[key]``: ``payload``
    set while the point holds ``before``, then ``unset`` deleted while it holds the new value."""

    record_id: str
    key: str
    before: str
    payload: dict[str, Any]
    unset: list[str]

    def operations(self) -> list[Operation]:
        condition = holding(self.record_id, self.key, self.before)
        change = models.SetPayload(payload=self.payload, filter=condition)
        found: list[Operation] = [models.SetPayloadOperation(set_payload=change)]
        if self.unset:
            after = holding(self.record_id, self.key, self.payload[self.key])
            dropped = models.DeletePayload(keys=self.unset, filter=after)
            found.append(models.DeletePayloadOperation(delete_payload=dropped))
        return found


def requests(swaps: Sequence[Swap]) -> Iterator[list[Operation]]:
    """The operations of ``swaps``, in order, in requests of a bounded size."""
    batch: list[Operation] = []
    size = 0
    for swap in swaps:
        if batch and (len(batch) >= _OPERATIONS or size >= _REQUEST_CHARS):
            yield batch
            batch, size = [], 0
        batch.extend(swap.operations())
        size += 2 * len(swap.before) + len(repr(swap.payload))
    if batch:
        yield batch
