"""Per-subject secrets: what is sealed for a subject (a user id) opens only while its secret
exists, so shredding the secret forgets it everywhere. :class:`SubjectSecrets` is the service
behind :class:`~hivemem.security.keyring.ZoneKeyring`'s subject methods.

They live in ``<ns>:keys:subjects``, a hash: subject (checked like every scope id: no
whitespace, no ``|``, the AAD separator) → its wrapped secret. A secret is made with
``HSETNX``: the loser of a race uses the winner's.
"""

from __future__ import annotations

import structlog

from hivemem.pool.adapters.redis_errors import redis_errors
from hivemem.pool.ids import check_scope_id
from hivemem.security.key_store import KeyStore

log = structlog.get_logger(__name__)


class SubjectSecrets:
    """The subject secrets of one namespace. Thread-safe."""

    def __init__(self, store: KeyStore) -> None:
        self._store = store
        self._subjects_key = f"{store.prefix}subjects"

    def secret(self, subject: str, *, create: bool = True) -> bytes | None:
        """The 32-byte secret of ``subject`` (a user id), made atomically on first use; None
        when it does not exist and ``create`` is false. Raises InvalidIdentifier for a bad
        subject."""
        subject = check_scope_id(subject, field="subject")
        secret = self._store.secret(("subject", subject), self._subjects_key, subject)
        if secret is not None or not create:
            return secret
        _, new_secret, raw = self._store.new_entry("subject", "", subject)
        with redis_errors():
            created = self._store.client.hsetnx(self._subjects_key, subject, raw)
        if created:
            self._store.remember(("subject", subject), raw.encode(), new_secret)
            log.info("subject_secret_created", subject=subject)
            return new_secret
        self._store.forget(("subject", subject))  # lost a race: read the winner's
        return self._store.secret(("subject", subject), self._subjects_key, subject)

    def shred(self, subject: str) -> bool:
        """Delete the secret of ``subject``: what was sealed for it opens nowhere any more.
        True if it existed. Raises InvalidIdentifier for a bad subject."""
        subject = check_scope_id(subject, field="subject")
        with redis_errors():
            existed = bool(self._store.client.hdel(self._subjects_key, subject))
        self._store.forget(("subject", subject))
        log.info("subject_shredded", subject=subject, existed=existed)
        return existed
