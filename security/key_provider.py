"""The master key that wraps every data key, behind a small KMS-style port.

A :class:`KeyProvider` wraps and unwraps key material under a master key it holds; callers only
ever see wrapped bytes and ``provider_id``, a name of the master key that reveals nothing of it.
``context`` is bound to every wrap (as associated data), so a wrapped key unwraps only with the
context it was wrapped with: :meth:`KeyProvider.unwrap` raises SealBroken for a wrong master key
or a wrong context.

:class:`LocalKeyProvider` keeps the master key in this process (AES-256-GCM, a random 12-byte
nonce before the ciphertext). A cloud KMS adapter implements the same protocol.
:func:`key_provider` picks the master key the settings name: ``security.master_key`` wins, then
``security.master_key_file``, then ``<data_dir>/keys/master.key``, made on first use (mode 0600
in a 0700 directory; racing processes end with the same key). The master key is never logged.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import stat
from pathlib import Path
from typing import Protocol, runtime_checkable

import structlog
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from hivemem.pool.errors import InvalidInput, SealBroken
from hivemem.pool.private_files import write_new
from hivemem.pool.settings import HivememSettings

log = structlog.get_logger(__name__)

#: Bytes of a master key (AES-256).
MASTER_KEY_BYTES = 32
_NONCE_BYTES = 12
_TAG_BYTES = 16


@runtime_checkable
class KeyProvider(Protocol):
    """Holds a master key and wraps key material under it. Implementations are thread-safe."""

    @property
    def provider_id(self) -> str:
        """A stable name of the master key (never the key, nor enough to guess it)."""
        ...

    def wrap(self, key: bytes, *, context: bytes) -> bytes:
        """``key`` encrypted and authenticated under the master key, bound to ``context``."""
        ...

    def unwrap(self, wrapped: bytes, *, context: bytes) -> bytes:
        """The key that :meth:`wrap` was given. Raises SealBroken when ``wrapped`` does not
        authenticate: another master key, another context, or altered bytes."""
        ...


class LocalKeyProvider:
    """A master key held in this process; wraps with AES-256-GCM (nonce || ciphertext || tag)."""

    __slots__ = ("_aead", "_provider_id")

    def __init__(self, master: bytes) -> None:
        """Raises InvalidInput (field ``master_key``) unless ``master`` is 32 bytes."""
        if not isinstance(master, bytes) or len(master) != MASTER_KEY_BYTES:
            raise InvalidInput(
                f"the master key must be {MASTER_KEY_BYTES} bytes", field="master_key"
            )
        self._aead = AESGCM(master)
        self._provider_id = "local:" + hashlib.sha256(master).hexdigest()[:8]

    def __repr__(self) -> str:
        return f"LocalKeyProvider({self._provider_id})"

    @classmethod
    def from_base64(cls, text: str) -> LocalKeyProvider:
        """A provider from the base64 text of a 32-byte key (surrounding whitespace ignored).
        Raises InvalidInput (field ``master_key``) for bad base64 or a wrong length."""
        try:
            master = base64.b64decode(text.strip().encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError, AttributeError):
            raise InvalidInput("the master key is not valid base64", field="master_key") from None
        return cls(master)

    @classmethod
    def from_file(cls, path: Path) -> LocalKeyProvider:
        """A provider from a file holding the key as base64 text. Raises InvalidInput (field
        ``master_key_file``) for a missing or unreadable file, or content that is not the base64
        of 32 bytes. Logs ``master_key_file_readable`` when its group or others can read it."""
        try:
            mode = path.stat().st_mode
            text = path.read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as error:
            raise InvalidInput(
                f"cannot read the master key file {path}: {type(error).__name__}",
                field="master_key_file",
            ) from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("master_key_file_readable", path=str(path), mode=oct(mode & 0o777))
        try:
            return cls.from_base64(text)
        except InvalidInput as error:
            raise InvalidInput(
                f"the master key file {path} is malformed: {error}", field="master_key_file"
            ) from None

    @classmethod
    def create_file(cls, path: Path) -> LocalKeyProvider:
        """Generate a master key and write it to ``path`` (base64, mode 0600; the parent made
        with mode 0700 if missing). The file appears whole or not at all. Raises InvalidInput
        (field ``master_key_file``) if ``path`` exists: a master key is never overwritten."""
        master = os.urandom(MASTER_KEY_BYTES)
        if not write_new(path, base64.b64encode(master) + b"\n"):
            raise InvalidInput(
                f"the master key file {path} exists; refusing to overwrite it",
                field="master_key_file",
            )
        log.info("master_key_created", path=str(path))
        return cls(master)

    @property
    def provider_id(self) -> str:
        return self._provider_id

    def wrap(self, key: bytes, *, context: bytes) -> bytes:
        nonce = os.urandom(_NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, key, context)

    def unwrap(self, wrapped: bytes, *, context: bytes) -> bytes:
        if len(wrapped) < _NONCE_BYTES + _TAG_BYTES:
            raise SealBroken(f"wrapped key is too short for {self._provider_id}")
        try:
            return self._aead.decrypt(wrapped[:_NONCE_BYTES], wrapped[_NONCE_BYTES:], context)
        except InvalidTag:
            raise SealBroken(
                f"wrapped key does not authenticate under {self._provider_id} in this context"
            ) from None


def key_provider(settings: HivememSettings) -> KeyProvider:
    """The key provider the settings name: ``security.master_key`` (base64) wins, then
    ``security.master_key_file`` (which must exist), then ``<data_dir>/keys/master.key``,
    created on first use; a process that loses the race to create it reads the winner's key.
    Raises InvalidInput for a malformed key or an unreadable file."""
    security = settings.security
    if security.master_key is not None:
        return LocalKeyProvider.from_base64(security.master_key.get_secret_value())
    if security.master_key_file is not None:
        return LocalKeyProvider.from_file(security.master_key_file)
    path = settings.data_dir / "keys" / "master.key"
    if not path.exists():
        master = os.urandom(MASTER_KEY_BYTES)
        if write_new(path, base64.b64encode(master) + b"\n"):
            log.info("master_key_created", path=str(path))
            return LocalKeyProvider(master)
        # else another process created it first: its key is the one
    return LocalKeyProvider.from_file(path)
