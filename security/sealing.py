"""Sealing content: AES-256-GCM under a key derived from a zone's data key and, for a subject's
content, that subject's secret.

The content key is HKDF-SHA256(ikm = the DEK, salt = the subject's secret or empty, info =
``hivemem/content|<zone>|<key id>``). Deleting a subject's secret (:meth:`ZoneKeyring.shred`)
thus makes every copy of its content unreadable wherever it is stored (crypto-shredding). The
associated data is ``hivemem/v1|<zone>|<key id>|<subject or empty>|<context>``: a sealed value
opens only for the zone, key, subject and caller context (e.g. the record id) it was sealed for.
Nonces are 12 random bytes, so one content key should seal fewer than 2**32 values: rotate the
zone's key well before that.

A :class:`Sealer` serves the zones at or below its clearance and refuses the others before it
touches Redis. :meth:`Sealer.reseal` moves a value to the zone's active key, so that a re-seal
task can empty an old key before :meth:`ZoneKeyring.retire`. Sealed values travel as text:
``v1.<key id>.<base64url nonce>.<base64url ciphertext>`` (unpadded base64url).
"""

from __future__ import annotations

import base64
import binascii
import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from hivemem.pool.enums import Zone, checked_zone
from hivemem.pool.errors import InvalidInput, KeyUnavailable, SealBroken
from hivemem.pool.ids import check_scope_id
from hivemem.security.data_keys import KEY_ID_PATTERN, DataKey
from hivemem.security.keyring import ZoneKeyring

_VERSION = "v1"
NONCE_BYTES = 12
TAG_BYTES = 16
#: Content keys (one per zone, key id and subject) memoised per sealer at most.
_CONTENT_KEYS = 4096


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str, what: str) -> bytes:
    """Strict unpadded base64url (only its canonical encoding), or InvalidInput."""
    try:
        data = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(f"sealed text has a malformed {what}", field="sealed") from None
    if _b64(data) != text:
        raise InvalidInput(f"sealed text has a non-canonical {what}", field="sealed")
    return data


@dataclass(frozen=True, slots=True)
class Sealed:
    """One sealed value: the id of the data key, the nonce and the ciphertext (with its tag)."""

    key_id: str
    nonce: bytes
    ciphertext: bytes

    def to_text(self) -> str:
        """``v1.<key id>.<base64url nonce>.<base64url ciphertext>``."""
        return f"{_VERSION}.{self.key_id}.{_b64(self.nonce)}.{_b64(self.ciphertext)}"

    @classmethod
    def from_text(cls, text: str) -> Sealed:
        """Parse :meth:`to_text`; raises InvalidInput (field ``sealed``) for anything else."""
        if not isinstance(text, str) or not text.isascii():
            raise InvalidInput("sealed text must be an ASCII string", field="sealed")
        parts = text.split(".")
        if len(parts) != 4 or parts[0] != _VERSION:
            raise InvalidInput(f"sealed text is not {_VERSION}.<key>.<nonce>.<ct>", field="sealed")
        if not KEY_ID_PATTERN.fullmatch(parts[1]):
            raise InvalidInput("sealed text has a malformed key id", field="sealed")
        nonce = _unb64(parts[2], "nonce")
        ciphertext = _unb64(parts[3], "ciphertext")
        if len(nonce) != NONCE_BYTES or len(ciphertext) < TAG_BYTES:
            raise InvalidInput("sealed text has a wrong nonce or ciphertext size", field="sealed")
        return cls(parts[1], nonce, ciphertext)


def _derive(zone: str, key_id: str, dek: bytes, salt: bytes) -> AESGCM:
    """The AEAD of the content key of (zone, key id, subject secret)."""
    info = f"hivemem/content|{zone}|{key_id}".encode()
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info)
    return AESGCM(hkdf.derive(dek))


def _aad(zone: str, key_id: str, subject: str | None, context: bytes) -> bytes:
    head = f"hivemem/v1|{zone}|{key_id}|{subject or ''}|".encode()
    return head + context


def _check_bytes(value: object, what: str) -> bytes:
    if not isinstance(value, bytes):
        raise InvalidInput(f"{what} must be bytes", field=what)
    return value


class Sealer:
    """Seals and opens content of the zones at or below ``clearance``. Thread-safe.

    Every method raises KeyUnavailable (why ``above clearance``) for a zone above the clearance
    before any Redis call, InvalidInput for a bad zone or argument, InvalidIdentifier for a bad
    subject, and PoolUnavailable when Redis cannot be reached. Batches fail whole: the first
    item that fails raises, and nothing is returned.
    """

    def __init__(self, keyring: ZoneKeyring, *, clearance: Zone | None = None) -> None:
        self._keyring = keyring
        self._clearance = Zone.top() if clearance is None else checked_zone(clearance)
        self._content_key = functools.lru_cache(maxsize=_CONTENT_KEYS)(_derive)

    def seal(
        self,
        zone: Zone | str,
        plaintext: bytes,
        *,
        context: bytes = b"",
        subject: str | None = None,
        key_id: str | None = None,
    ) -> Sealed:
        """``plaintext`` sealed with the zone's active key (and ``subject``'s secret, made on
        first use), bound to ``context``. ``key_id``: seal with that key of the zone instead
        (one :meth:`active_key_id` gave, for a context that names the key)."""
        return self.seal_many(zone, [(plaintext, context, subject)], key_id=key_id)[0]

    def open(
        self,
        zone: Zone | str,
        sealed: Sealed,
        *,
        context: bytes = b"",
        subject: str | None = None,
    ) -> bytes:
        """The plaintext of ``sealed``. Raises SealBroken if it does not authenticate (altered,
        or another zone, key, subject or context), KeyUnavailable for an unknown or retired key
        or a shredded subject (why ``subject forgotten``)."""
        return self.open_many(zone, [(sealed, context, subject)])[0]

    def active_key_id(self, zone: Zone | str) -> str:
        """The id of the key :meth:`seal` uses for ``zone`` now."""
        return self._keyring.active(self._zone(zone)).key_id

    def seal_many(
        self,
        zone: Zone | str,
        items: Sequence[tuple[bytes, bytes, str | None]],
        *,
        key_id: str | None = None,
    ) -> list[Sealed]:
        """:meth:`seal` for (plaintext, context, subject) items, in order, under one key."""
        zone = self._zone(zone)
        checked = [
            (_check_bytes(p, "plaintext"), _check_bytes(c, "context"), _subject(s))
            for p, c, s in items
        ]
        if not checked:
            return []
        dek = self._keyring.active(zone) if key_id is None else self._keyring.get(zone, key_id)
        aeads: dict[str | None, AESGCM] = {}
        out = []
        for plaintext, context, subject in checked:
            aead = aeads.get(subject)
            if aead is None:
                aead = aeads[subject] = self._aead(dek, subject, create=True)
            nonce = os.urandom(NONCE_BYTES)
            ciphertext = aead.encrypt(nonce, plaintext, _aad(zone, dek.key_id, subject, context))
            out.append(Sealed(dek.key_id, nonce, ciphertext))
        return out

    def open_many(
        self, zone: Zone | str, items: Sequence[tuple[Sealed, bytes, str | None]]
    ) -> list[bytes]:
        """:meth:`open` for (sealed, context, subject) items, in order."""
        zone = self._zone(zone)
        checked = [(_sealed(x), _check_bytes(c, "context"), _subject(s)) for x, c, s in items]
        deks: dict[str, DataKey] = {}
        aeads: dict[tuple[str, str | None], AESGCM] = {}
        out = []
        for sealed, context, subject in checked:
            dek = deks.get(sealed.key_id)
            if dek is None:
                dek = deks[sealed.key_id] = self._keyring.get(zone, sealed.key_id)
            aead = aeads.get((dek.key_id, subject))
            if aead is None:
                aead = aeads[dek.key_id, subject] = self._aead(dek, subject, create=False)
            aad = _aad(zone, dek.key_id, subject, context)
            try:
                out.append(aead.decrypt(sealed.nonce, sealed.ciphertext, aad))
            except InvalidTag:
                raise SealBroken(
                    f"sealed value under key {dek.key_id} of {zone} does not authenticate"
                ) from None
        return out

    def reseal(
        self,
        zone: Zone | str,
        sealed: Sealed,
        *,
        context: bytes = b"",
        subject: str | None = None,
    ) -> Sealed:
        """``sealed`` under the zone's active key (``sealed`` itself if it already is). Raises
        like :meth:`open`."""
        zone = self._zone(zone)
        if sealed.key_id == self._keyring.active(zone).key_id:
            return sealed
        plaintext = self.open(zone, sealed, context=context, subject=subject)
        return self.seal(zone, plaintext, context=context, subject=subject)

    def _zone(self, zone: Zone | str) -> Zone:
        zone = checked_zone(zone)
        if zone > self._clearance:
            raise KeyUnavailable(zone, "*", "above clearance")
        return zone

    def _aead(self, dek: DataKey, subject: str | None, *, create: bool) -> AESGCM:
        salt = b""
        if subject is not None:
            secret = self._keyring.subject_secret(subject, create=create)
            if secret is None:
                raise KeyUnavailable(dek.zone, dek.key_id, "subject forgotten")
            salt = secret
        return self._content_key(dek.zone, dek.key_id, dek.secret, salt)


def _subject(value: str | None) -> str | None:
    return None if value is None else check_scope_id(value, field="subject")


def _sealed(value: object) -> Sealed:
    """``value`` if it is a Sealed of the right shape (its key id is checked by the keyring)."""
    if (
        not isinstance(value, Sealed)
        or not isinstance(value.nonce, bytes)
        or not isinstance(value.ciphertext, bytes)
        or len(value.nonce) != NONCE_BYTES
        or len(value.ciphertext) < TAG_BYTES
    ):
        raise InvalidInput("expected a well-formed Sealed value", field="sealed")
    return value
