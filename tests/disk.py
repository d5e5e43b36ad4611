"""What the files under a directory hold, for tests that prove data left the disk."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def vector_on_disk(directory: Path, vector: Sequence[float] | np.ndarray | None) -> bool:
    """Whether any file under ``directory`` holds ``vector`` as little-endian float32 bytes."""
    assert vector is not None, "a vector to look for"
    needle = np.asarray(vector, dtype="<f4").tobytes()
    return any(needle in f.read_bytes() for f in directory.rglob("*") if f.is_file())
