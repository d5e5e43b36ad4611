"""What hivemem logs of an exception it catches and goes on after: :func:`described`.

Never the traceback's variables, nor the message of an error raised by code other than
hivemem's: a record's plaintext may be in either (a caller's listener that fails on a record it
was given, a rich traceback renderer that shows each frame's locals). hivemem's own errors never
quote content (docs/security.md), so their message is kept.
"""

from __future__ import annotations

import traceback
from pathlib import Path

from hivemem.pool.errors import HivememError


def described(error: BaseException) -> dict[str, str]:
    """The fields to log for ``error``: its type, where it was raised (file, line, function)
    and, for hivemem's own errors and OSErrors, its message."""
    fields = {"error_type": type(error).__qualname__}
    frames = traceback.extract_tb(error.__traceback__)
    if frames:
        last = frames[-1]
        fields["raised_at"] = f"{Path(last.filename).name}:{last.lineno} in {last.name}"
    if isinstance(error, HivememError | OSError):
        fields["error"] = str(error)[:300]
    return fields
