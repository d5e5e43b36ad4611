"""How an archived record is packed: the whole record (dense vector included) as JSON,
compressed with zlib, in base64 text (payloads are JSON). Shared by the zone store adapters."""

from __future__ import annotations

import base64
import zlib

from hivemem.pool.errors import InvalidInput
from hivemem.pool.records import MemoryRecord

_LEVEL = 6


def pack(record: MemoryRecord) -> str:
    return base64.b64encode(zlib.compress(record.model_dump_json().encode(), _LEVEL)).decode()


def unpack(blob: str) -> MemoryRecord:
    """Raises InvalidInput for a blob that is not a packed record."""
    try:
        raw = zlib.decompress(base64.b64decode(blob, validate=True))
    except (ValueError, zlib.error) as error:
        raise InvalidInput(f"not an archived record: {error}", field="blob") from None
    return MemoryRecord.model_validate_json(raw)
