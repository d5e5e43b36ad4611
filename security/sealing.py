"""Sealing content: AES-256-GCM under a key derived from a zone's data key and, for a subject's
content, that subject's secret.

The content key is HKDF-SHA256(ikm = the DEK, salt = the subject's secret or empty, info =
``hivemem/content|<zone>|<key id>``). Deleting a subject's secret (:meth:`ZoneKeyring.shred`)
thus makes every copy of its content unreadable wherever it is stored (crypto-shredding).
Nonces are 12 random bytes, so one content key should seal fewer than 2**32 values: rotate the
zone's key well before that.

Sealed values travel as text, in one of two versions (unpadded base64url):

- ``v1.<key id>.<nonce>.<ciphertext>``: content without a subject, and what a subject's content
  was sealed as before version 2 (it still opens as it always did). The associated data is
  ``hivemem/v1|<zone>|<key id>|<subject or empty>|<context>``.
- ``v2.<key id>.<stamp>.<nonce>.<ciphertext>``: a subject's content. The 24-byte stamp is the
  *secret id* (8 bytes: HMAC-SHA256 of a fixed label under the subject's secret, truncated),
  then a 16-byte HMAC-SHA256, under a key derived from the DEK alone (info
  ``hivemem/stamp|<zone>|<key id>``), of the associated data, the nonce and the ciphertext.
  The associated data is ``hivemem/v2|<zone>|<key id>|<subject>|<secret id>|<context>``.

Either way a sealed value opens only for the zone, key, subject and caller context (e.g. the
record id) it was sealed for, and a subject with no secret (shredded) makes every authentic
value sealed for it raise KeyUnavailable (``subject forgotten``). The stamp tells a value sealed
under an earlier secret of its subject (forgotten, then the same subject id sealed for again: a
new secret) from an altered one: its MAC, checked first and with the zone's key alone,
authenticates every byte of the value and its subject, so an altered value raises SealBroken
whether or not its subject has a secret; an authentic one whose secret id is not that of the
subject's secret now raises KeyUnavailable (``subject forgotten``) too. A version-1 value of an
earlier secret raises SealBroken (nothing tells it from an altered one), and one of a subject
with no secret reads as forgotten whatever its bytes, as before stamps.

What the stamp shows: the secret id is the same on every value sealed under one secret, so it
links a subject's values to each other, as the subject id kept in clear beside them (a
record's scope, a message's header) does anyway. It reveals nothing of the secret (a
pseudo-random function of it), is unrelated between two secrets of one subject (a new secret
is random) and between pools (each pool makes its own secrets), and once the secret is shredded
no one can tell which subject a secret id was made for. The MAC can be made and checked by
holders of the zone's key only, who can open the value anyway.

A :class:`Sealer` serves the zones at or below its clearance and refuses the others before it
touches Redis. :meth:`Sealer.reseal` moves a value to the zone's active key, so that a re-seal
task can empty an old key before :meth:`ZoneKeyring.retire`.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
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

#: Why KeyUnavailable is raised for content whose subject's secret is gone (or is another).
SUBJECT_FORGOTTEN = "subject forgotten"
NONCE_BYTES = 12
TAG_BYTES = 16
#: A version-2 stamp: the secret id, then the MAC.
SECRET_ID_BYTES = 8
STAMP_BYTES = SECRET_ID_BYTES + 16
_SECRET_ID_LABEL = b"hivemem/subject secret id"
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
    """One sealed value: the id of the data key, the nonce, the ciphertext (with its tag) and,
    for a subject's content in version 2, the stamp (None: version 1)."""

    key_id: str
    nonce: bytes
    ciphertext: bytes
    stamp: bytes | None = None

    def to_text(self) -> str:
        """``v1.<key id>.<nonce>.<ciphertext>``, or ``v2.<key id>.<stamp>.<nonce>.<ciphertext>``
        with a stamp."""
        sealed = f"{_b64(self.nonce)}.{_b64(self.ciphertext)}"
        if self.stamp is None:
            return f"v1.{self.key_id}.{sealed}"
        return f"v2.{self.key_id}.{_b64(self.stamp)}.{sealed}"

    @classmethod
    def from_text(cls, text: str) -> Sealed:
        """Parse :meth:`to_text`; raises InvalidInput (field ``sealed``) for anything else."""
        if not isinstance(text, str) or not text.isascii():
            raise InvalidInput("sealed text must be an ASCII string", field="sealed")
        parts = text.split(".")
        if parts[0] == "v1" and len(parts) == 4:
            key_id, stamp, nonce_text, ciphertext_text = parts[1], None, parts[2], parts[3]
        elif parts[0] == "v2" and len(parts) == 5:
            key_id, nonce_text, ciphertext_text = parts[1], parts[3], parts[4]
            stamp = _unb64(parts[2], "stamp")
            if len(stamp) != STAMP_BYTES:
                raise InvalidInput("sealed text has a wrong stamp size", field="sealed")
        else:
            raise InvalidInput(
                "sealed text is not v1.<key>.<nonce>.<ct> or v2.<key>.<stamp>.<nonce>.<ct>",
                field="sealed",
            )
        if not KEY_ID_PATTERN.fullmatch(key_id):
            raise InvalidInput("sealed text has a malformed key id", field="sealed")
        nonce = _unb64(nonce_text, "nonce")
        ciphertext = _unb64(ciphertext_text, "ciphertext")
        if len(nonce) != NONCE_BYTES or len(ciphertext) < TAG_BYTES:
            raise InvalidInput("sealed text has a wrong nonce or ciphertext size", field="sealed")
        return cls(key_id, nonce, ciphertext, stamp)


def _derive(zone: str, key_id: str, dek: bytes, salt: bytes) -> AESGCM:
    """The AEAD of the content key of (zone, key id, subject secret)."""
    info = f"hivemem/content|{zone}|{key_id}".encode()
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info)
    return AESGCM(hkdf.derive(dek))


def _stamp_key(zone: str, key_id: str, dek: bytes) -> bytes:
    """The key of the stamps' MACs of (zone, key id): the DEK's alone, no subject's."""
    info = f"hivemem/stamp|{zone}|{key_id}".encode()
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(dek)


def _secret_id(secret: bytes) -> bytes:
    """The id a version-2 stamp carries of the subject secret ``secret``."""
    return hmac.digest(secret, _SECRET_ID_LABEL, "sha256")[:SECRET_ID_BYTES]


def _aad(
    zone: str, key_id: str, subject: str | None, context: bytes, secret_id: bytes | None
) -> bytes:
    """The associated data of version 1 (``secret_id`` None) or 2."""
    if secret_id is None:
        return f"hivemem/v1|{zone}|{key_id}|{subject or ''}|".encode() + context
    return f"hivemem/v2|{zone}|{key_id}|{subject}|".encode() + secret_id + b"|" + context


def _stamp_mac(key: bytes, aad: bytes, nonce: bytes, ciphertext: bytes) -> bytes:
    """The MAC of a stamp: of the associated data (its length first), nonce and ciphertext."""
    mac = hmac.new(key, len(aad).to_bytes(4, "big"), hashlib.sha256)
    for part in (aad, nonce, ciphertext):
        mac.update(part)
    return mac.digest()[: STAMP_BYTES - SECRET_ID_BYTES]


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
        self._stamp_key = functools.lru_cache(maxsize=_CONTENT_KEYS)(_stamp_key)
        self._secret_id = functools.lru_cache(maxsize=_CONTENT_KEYS)(_secret_id)

    def seal(
        self,
        zone: Zone | str,
        plaintext: bytes,
        *,
        context: bytes = b"",
        subject: str | None = None,
        key_id: str | None = None,
        stamp: bool = True,
    ) -> Sealed:
        """``plaintext`` sealed with the zone's active key (and ``subject``'s secret, made on
        first use), bound to ``context``. ``key_id``: seal with that key of the zone instead
        (one :meth:`active_key_id` gave, for a context that names the key). A subject's content
        is sealed in version 2 (stamped: see the module docstring); with ``stamp`` false, in
        version 1, for a container that keeps no stamp (a pool message's frame)."""
        return self.seal_many(zone, [(plaintext, context, subject)], key_id=key_id, stamp=stamp)[0]

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
        or a shredded subject (why ``subject forgotten``; so does a version-2 value sealed under
        an earlier secret of the subject)."""
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
        stamp: bool = True,
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
        keys: dict[str | None, tuple[AESGCM, bytes | None]] = {}
        out = []
        for plaintext, context, subject in checked:
            found = keys.get(subject)
            if found is None:
                found = keys[subject] = self._content(dek, subject, create=True)
            aead, secret_id = found
            if not stamp:
                secret_id = None
            nonce = os.urandom(NONCE_BYTES)
            aad = _aad(zone, dek.key_id, subject, context, secret_id)
            ciphertext = aead.encrypt(nonce, plaintext, aad)
            mark = None
            if secret_id is not None:
                mark = secret_id + _stamp_mac(self._stamp_key_of(dek), aad, nonce, ciphertext)
            out.append(Sealed(dek.key_id, nonce, ciphertext, mark))
        return out

    def open_many(
        self, zone: Zone | str, items: Sequence[tuple[Sealed, bytes, str | None]]
    ) -> list[bytes]:
        """:meth:`open` for (sealed, context, subject) items, in order."""
        zone = self._zone(zone)
        checked = [(_sealed(x), _check_bytes(c, "context"), _subject(s)) for x, c, s in items]
        deks: dict[str, DataKey] = {}
        keys: dict[tuple[str, str | None], tuple[AESGCM, bytes | None]] = {}
        out = []
        for sealed, context, subject in checked:
            dek = deks.get(sealed.key_id)
            if dek is None:
                dek = deks[sealed.key_id] = self._keyring.get(zone, sealed.key_id)
            # The stamp first: it needs the zone's key only, so an altered value raises
            # SealBroken even when its subject (as given, or as changed) has no secret.
            self._check_stamp(zone, dek, (sealed, context, subject))
            found = keys.get((dek.key_id, subject))
            if found is None:
                found = keys[dek.key_id, subject] = self._content(dek, subject, create=False)
            aead, secret_id = found
            if sealed.stamp is None:
                secret_id = None
            elif sealed.stamp[:SECRET_ID_BYTES] != secret_id:
                raise KeyUnavailable(dek.zone, dek.key_id, SUBJECT_FORGOTTEN)
            aad = _aad(zone, dek.key_id, subject, context, secret_id)
            try:
                out.append(aead.decrypt(sealed.nonce, sealed.ciphertext, aad))
            except InvalidTag:
                raise _broken(zone, dek.key_id) from None
        return out

    def reseal(
        self,
        zone: Zone | str,
        sealed: Sealed,
        *,
        context: bytes = b"",
        subject: str | None = None,
    ) -> Sealed:
        """``sealed`` under the zone's active key (``sealed`` itself if it already is), in its
        version. Raises like :meth:`open`."""
        zone = self._zone(zone)
        if sealed.key_id == self._keyring.active(zone).key_id:
            return sealed
        plaintext = self.open(zone, sealed, context=context, subject=subject)
        stamp = sealed.stamp is not None
        return self.seal(zone, plaintext, context=context, subject=subject, stamp=stamp)

    def _zone(self, zone: Zone | str) -> Zone:
        zone = checked_zone(zone)
        if zone > self._clearance:
            raise KeyUnavailable(zone, "*", "above clearance")
        return zone

    def _content(
        self, dek: DataKey, subject: str | None, *, create: bool
    ) -> tuple[AESGCM, bytes | None]:
        """The AEAD of ``subject``'s content under ``dek``, and the id of the subject's secret
        (None without a subject). KeyUnavailable when the subject has no secret (forgotten)
        and ``create`` is false."""
        if subject is None:
            return self._content_key(dek.zone, dek.key_id, dek.secret, b""), None
        secret = self._keyring.subject_secret(subject, create=create)
        if secret is None:
            raise KeyUnavailable(dek.zone, dek.key_id, SUBJECT_FORGOTTEN)
        aead = self._content_key(dek.zone, dek.key_id, dek.secret, secret)
        return aead, self._secret_id(secret)

    def _stamp_key_of(self, dek: DataKey) -> bytes:
        return self._stamp_key(dek.zone, dek.key_id, dek.secret)

    def _check_stamp(
        self, zone: Zone, dek: DataKey, item: tuple[Sealed, bytes, str | None]
    ) -> None:
        """SealBroken unless the stamp of a (sealed, context, subject) ``item`` authenticates
        it for that subject and context (a stamped value always has a subject); nothing for a
        version-1 value. Needs the zone's key only, not the subject's secret."""
        sealed, context, subject = item
        if sealed.stamp is None:
            return
        secret_id, mac = sealed.stamp[:SECRET_ID_BYTES], sealed.stamp[SECRET_ID_BYTES:]
        if subject is None:
            raise _broken(zone, dek.key_id)
        aad = _aad(zone, dek.key_id, subject, context, secret_id)
        expected = _stamp_mac(self._stamp_key_of(dek), aad, sealed.nonce, sealed.ciphertext)
        if not hmac.compare_digest(mac, expected):
            raise _broken(zone, dek.key_id)


def _broken(zone: Zone, key_id: str) -> SealBroken:
    return SealBroken(f"sealed value under key {key_id} of {zone} does not authenticate")


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
        or not (value.stamp is None or _is_stamp(value.stamp))
    ):
        raise InvalidInput("expected a well-formed Sealed value", field="sealed")
    return value


def _is_stamp(value: object) -> bool:
    return isinstance(value, bytes) and len(value) == STAMP_BYTES
