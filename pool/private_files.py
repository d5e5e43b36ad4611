"""Files readable by their owner only: keys, passwords, and what names them.

:func:`write_new` (a secret written once: the master key, the admin's and agents' signing keys,
the embedded Redis server's password) writes a private temporary file (O_EXCL, mode 0600
whatever the umask) in the target's directory (made with mode 0700), fsyncs it, then hard-links
it to its name. The link fails if the name exists, so of racing writers exactly one wins, a
reader never sees a partial file, and an existing key is never overwritten. :func:`write_private`
replaces a file's content the same way (a private temporary file, renamed over it).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def _private_temp(path: Path, content: bytes, *, durable: bool) -> Iterator[Path]:
    """A temporary file beside ``path`` holding ``content``, mode 0600 whatever the umask (its
    directory made with mode 0700), fsynced when ``durable``; removed on leaving."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as file:
            os.fchmod(file.fileno(), 0o600)
            file.write(content)
            if durable:
                file.flush()
                os.fsync(file.fileno())
        yield temp
    finally:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()


def write_new(path: Path, content: bytes) -> bool:
    """Write ``content`` to ``path`` if nothing is there: True if written, False if a file was
    there already (left untouched). Other OSErrors propagate."""
    with _private_temp(path, content, durable=True) as temp:
        try:
            os.link(temp, path)
        except FileExistsError:
            return False
    _fsync_dir(path.parent)
    return True


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_private(path: Path, content: bytes) -> None:
    """Replace ``path``'s content with ``content`` (mode 0600 whatever the umask): a reader sees
    the old file or the new one, never a partial one."""
    with _private_temp(path, content, durable=False) as temp:
        temp.replace(path)
