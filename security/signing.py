"""Ed25519 signing keys: agents sign pool messages, the admin signs registry entries.

Keys and signatures travel as standard base64 text of their raw bytes (a public key: 32 bytes,
44 characters; a signature: 64 bytes, 88 characters), in canonical form only: text that decodes
but would not be produced by encoding the same bytes is malformed.

A private key is stored as one line of base64 text in a file of mode 0600, in a directory
created with mode 0700. The file appears atomically and is never replaced: it is written to a
temporary file, then hard-linked to its name, which fails if the name exists (the O_EXCL of a
link). So concurrent :meth:`SigningKey.load_or_create` calls end up sharing one key, and no
reader sees a half-written file.

Verification never raises: a malformed key or signature, a missing signature and a bad one all
verify as False. Keys are made and messages signed with ``cryptography`` (OpenSSL); signatures
are verified with libsodium (PyNaCl), the same Ed25519, because every message a receiver takes
in is verified on the sync path and libsodium does it in about half the time (50 µs against
90 µs on the benchmark machine; see docs/performance.md). libsodium is also the stricter of the
two: it refuses small-order keys (OpenSSL verifies a trivial signature under the identity key
for any data) and non-canonical signatures; :func:`is_public_key` refuses such keys as well.

A registry entry is signed over :func:`entry_bytes`, whose domain tag keeps it from being taken
for any other signed content.
"""

from __future__ import annotations

import base64
import functools
import json
import os
from collections.abc import Sequence
from pathlib import Path

import nacl.bindings
import nacl.exceptions
import structlog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hivemem.pool.compartments import checked_compartments
from hivemem.pool.enums import Zone, checked_zone
from hivemem.pool.errors import InvalidInput
from hivemem.pool.ids import check_agent_id
from hivemem.pool.private_files import write_new

log = structlog.get_logger(__name__)

#: The domain tag inside every signed registry entry.
REGISTRY_DOMAIN = "hivemem/registry/v1"
KEY_BYTES = 32
SIGNATURE_BYTES = 64
_KEY_FILE_MAX_BYTES = 256


def _b64_chars(size: int) -> int:
    return 4 * ((size + 2) // 3)


def _decode(text: object, size: int) -> bytes | None:
    """The ``size`` raw bytes that ``text`` encodes canonically, or None."""
    if not isinstance(text, str) or len(text) != _b64_chars(size):
        return None
    try:
        raw = base64.b64decode(text, validate=True)
    except ValueError:  # binascii.Error, and non-ASCII text
        return None
    if len(raw) != size or base64.b64encode(raw).decode("ascii") != text:
        return None
    return raw


def _encode(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


@functools.lru_cache(maxsize=4096)
def _public_key(text: str) -> bytes | None:
    """The raw key that ``text`` encodes, or None when it is not a point of Ed25519's
    prime-order group (a small-order key, such as the identity, under which a trivial
    signature verifies for any data with OpenSSL); cached, since the same few keys verify
    often."""
    raw = _decode(text, KEY_BYTES)
    if raw is None or not nacl.bindings.crypto_core_ed25519_is_valid_point(raw):
        return None
    return raw


def is_public_key(text: object) -> bool:
    """Whether ``text`` is a well-formed public key (canonical base64 of 32 bytes)."""
    return isinstance(text, str) and _public_key(text) is not None


def verify_signature(public_key: str, signature: str | bytes | None, data: bytes) -> bool:
    """Whether ``signature`` (base64 text, or its 64 raw bytes) is ``public_key``'s signature of
    ``data``. False, never an exception, for a malformed key or signature, None, or a signature
    that does not verify."""
    key = _public_key(public_key) if isinstance(public_key, str) else None
    if isinstance(signature, bytes):
        raw: bytes | None = signature if len(signature) == SIGNATURE_BYTES else None
    else:
        raw = _decode(signature, SIGNATURE_BYTES)
    if key is None or raw is None:
        return False
    try:
        nacl.bindings.crypto_sign_open(raw + data, key)
    except (nacl.exceptions.CryptoError, TypeError, ValueError):
        return False
    return True


class SigningKey:
    """An Ed25519 private key. Its repr shows only the public key."""

    __slots__ = ("_key", "_public_key")

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key
        self._public_key = _encode(key.public_key().public_bytes_raw())

    @classmethod
    def generate(cls) -> SigningKey:
        """A fresh random key."""
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_private_bytes(cls, raw: bytes) -> SigningKey:
        """The key of 32 raw private bytes; InvalidInput for anything else."""
        if not isinstance(raw, bytes) or len(raw) != KEY_BYTES:
            raise InvalidInput(f"a private key is {KEY_BYTES} raw bytes", field="raw")
        return cls(Ed25519PrivateKey.from_private_bytes(raw))

    @property
    def public_key(self) -> str:
        """The public key: base64 of its 32 raw bytes."""
        return self._public_key

    def private_bytes(self) -> bytes:
        """The 32 raw private bytes (to be kept wrapped or in a file of mode 0600 only)."""
        return self._key.private_bytes_raw()

    def sign(self, data: bytes) -> str:
        """The signature of ``data``: base64 of 64 bytes."""
        return _encode(self.sign_raw(data))

    def sign_raw(self, data: bytes) -> bytes:
        """The signature of ``data``: its 64 raw bytes (pool messages carry it so)."""
        return self._key.sign(data)

    def __repr__(self) -> str:
        return f"SigningKey(public_key={self._public_key!r})"

    def save(self, path: Path) -> None:
        """Store the key at ``path`` (mode 0600; a missing parent is created with mode 0700).
        Saving the key a file already holds changes nothing; InvalidInput if ``path`` holds
        anything else (another key, or a malformed file): remove it first to replace it."""
        path = Path(path)
        if self._create(path):
            return
        existing = self.load(path)
        if existing.public_key != self.public_key:
            raise InvalidInput(
                f"{path} holds another signing key; remove it to replace it", field="path"
            )

    @classmethod
    def load(cls, path: Path) -> SigningKey:
        """The key stored at ``path``; InvalidInput for a missing, unreadable or malformed file."""
        key = cls._read(Path(path))
        if key is None:
            raise InvalidInput(f"no signing key file at {path}", field="path")
        return key

    @classmethod
    def load_or_create(cls, path: Path, *, initial: SigningKey | None = None) -> SigningKey:
        """The key stored at ``path``, created (and saved) if there is none: ``initial``, or a
        new one. Safe to race: of concurrent callers, in any processes, one creates the file
        and all return its key. InvalidInput for an unreadable or malformed file."""
        path = Path(path)
        for _attempt in range(3):
            key = cls._read(path)
            if key is not None:
                return key
            key = initial or cls.generate()
            if key._create(path):
                return key
            # Another caller created it first: read theirs (unless it vanished again).
        raise InvalidInput(f"the signing key file {path} keeps disappearing", field="path")

    @classmethod
    def _read(cls, path: Path) -> SigningKey | None:
        """The key at ``path``, None if there is no file; InvalidInput if it is not a key."""
        try:
            with path.open("rb") as file:
                content = file.read(_KEY_FILE_MAX_BYTES + 1)
                mode = os.fstat(file.fileno()).st_mode
        except FileNotFoundError:
            return None
        except OSError as error:
            raise InvalidInput(
                f"cannot read the signing key file {path}: {type(error).__name__}", field="path"
            ) from None
        try:
            raw = _decode(content.decode("ascii").strip(), KEY_BYTES)
        except UnicodeDecodeError:
            raw = None
        if raw is None or len(content) > _KEY_FILE_MAX_BYTES:
            raise InvalidInput(f"{path} does not hold a signing key", field="path")
        if mode & 0o077:
            log.warning("signing_key_file_too_open", path=str(path), mode=oct(mode & 0o777))
        return cls(Ed25519PrivateKey.from_private_bytes(raw))

    def _create(self, path: Path) -> bool:
        """Write the key to ``path`` if no file is there: True if written, False if one was.
        InvalidInput if the file cannot be written (the error's class says why)."""
        try:
            written = write_new(
                path, _encode(self._key.private_bytes_raw()).encode("ascii") + b"\n"
            )
        except OSError as error:
            raise InvalidInput(
                f"cannot write the signing key file {path}: {type(error).__name__}", field="path"
            ) from None
        if written:
            log.info("signing_key_created", path=str(path))
        return written


def entry_bytes(
    agent_id: str, clearance: Zone, public_key: str | None, *, compartments: Sequence[str] = ()
) -> bytes:
    """The canonical bytes of a registry entry, what the admin signs: compact JSON with sorted
    keys of the agent id, clearance, public key (null if none), the domain tag and, when it
    holds any, the agent's compartments (canonical order). Raises InvalidInput for a malformed
    agent id, an unknown clearance or compartment, or a malformed public key."""
    agent_id = check_agent_id(agent_id, field="agent_id")
    zone = checked_zone(clearance)
    if public_key is not None and not is_public_key(public_key):
        raise InvalidInput("public_key is not base64 of a 32-byte key", field="public_key")
    entry: dict[str, object] = {
        "agent_id": agent_id,
        "clearance": zone.value,
        "domain": REGISTRY_DOMAIN,
        "public_key": public_key,
    }
    held = checked_compartments(compartments)
    if held:
        entry["compartments"] = list(held)
    return json.dumps(entry, sort_keys=True, separators=(",", ":")).encode("ascii")


def verify_entry(
    admin_public_key: str,
    agent_id: str,
    clearance: Zone,
    public_key: str | None,
    signature: str | None,
    *,
    compartments: Sequence[str] = (),
) -> bool:
    """Whether ``signature`` is the admin's signature of this registry entry. False, never an
    exception, for a malformed entry, key or signature."""
    try:
        data = entry_bytes(agent_id, clearance, public_key, compartments=compartments)
    except InvalidInput:
        return False
    return verify_signature(admin_public_key, signature, data)


class AdminSigner:
    """The registry admin's key: signs and verifies registry entries."""

    __slots__ = ("_key",)

    def __init__(self, key: SigningKey) -> None:
        self._key = key

    @classmethod
    def from_file(cls, path: Path) -> AdminSigner:
        """The admin key stored at ``path``, created there if there is none."""
        return cls(SigningKey.load_or_create(path))

    @property
    def public_key(self) -> str:
        return self._key.public_key

    def sign_entry(
        self,
        agent_id: str,
        clearance: Zone,
        public_key: str | None,
        *,
        compartments: Sequence[str] = (),
    ) -> str:
        """The admin signature of this entry; InvalidInput as :func:`entry_bytes` raises it."""
        data = entry_bytes(agent_id, clearance, public_key, compartments=compartments)
        return self._key.sign(data)

    def verify_entry(
        self,
        agent_id: str,
        clearance: Zone,
        public_key: str | None,
        signature: str | None,
        *,
        compartments: Sequence[str] = (),
    ) -> bool:
        """Whether ``signature`` is this admin's signature of the entry (never raises)."""
        return verify_entry(
            self.public_key, agent_id, clearance, public_key, signature,
            compartments=compartments,
        )  # fmt: skip

    def __repr__(self) -> str:
        return f"AdminSigner(public_key={self.public_key!r})"
