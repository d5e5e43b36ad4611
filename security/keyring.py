"""Per-zone data keys (DEKs), per-zone vector keys and per-subject secrets, kept in Redis wrapped
by the master key of a :class:`~hivemem.security.key_provider.KeyProvider`.

:class:`ZoneKeyring` is the facade the rest of hivemem holds. Each kind of key has its service:
data keys in :mod:`hivemem.security.data_keys`, the vector keys made once in
:mod:`hivemem.security.fixed_keys`, the workers' ingest keys in
:mod:`hivemem.security.ingest_keys`, subject secrets in :mod:`hivemem.security.subject_secrets`;
the wrapped entries they share, and the unwrapped keys this process holds, in
:mod:`hivemem.security.key_store`.

Redis layout, every key under ``<namespace>:keys:``:

- ``<ns>:keys:zone:<zone>``, a hash: ``active`` → the id of the key new content is sealed with;
  ``dek:<key_id>`` → a wrapped DEK; ``retired:<key_id>`` → ``{"created_at", "retired_at"}`` of
  a retired DEK, whose ``dek:`` field was deleted.
- ``<ns>:keys:vector:<zone>``, a string: the zone's wrapped vector key.
- ``<ns>:keys:ingest``, a string: the workers' first wrapped ingest key, and
  ``<ns>:keys:ingest:public`` its public half in clear (base64), to which agents seal what they
  queue for the workers; the keys rotations made since in ``<ns>:keys:ingest:ring``
  (:mod:`hivemem.security.ingest_keys`).
- ``<ns>:keys:subjects``, a hash: subject (a user id, checked like every scope id: no
  whitespace, no ``|``, the AAD separator) → its wrapped secret.
- ``<ns>:keys:unaudited``, a hash: the rotations and ingest-key retirements whose audit entry
  is not written yet (:mod:`hivemem.security.key_changes`).

Creation is atomic across processes: the first DEK of a zone under WATCH/MULTI, vector keys with
``SET NX``, subject secrets with ``HSETNX``; the loser of a race uses the winner's key.

Caching: unwrapped keys are kept in this process. The active key id, and every cached DEK or
subject secret, is checked against Redis again once it is older than ``active_ttl_s``: a
rotation, retirement or shred made by another process takes effect here within that time (in
this process, at once). A retired DEK's and a shredded subject's wrapped material is deleted,
so no process can unwrap it again; copies in Redis persistence files (AOF, RDB) last until those
are rewritten. Redis errors raise PoolUnavailable; after one, Redis is not asked for keys
again for half a second (held keys are served, missing ones raise at once).
"""

from __future__ import annotations

from collections.abc import Callable

import redis

from hivemem.pool.enums import Zone
from hivemem.pool.errors import InvalidInput
from hivemem.security.audit import check_namespace
from hivemem.security.data_keys import DataKey, DataKeys, KeyInfo
from hivemem.security.fixed_keys import FixedKeys
from hivemem.security.ingest_keys import IngestKeys
from hivemem.security.key_changes import KeyChanges
from hivemem.security.key_provider import KeyProvider
from hivemem.security.key_store import KeyStore
from hivemem.security.subject_secrets import SubjectSecrets

#: How long (seconds) a keyring uses the active key id it read before asking Redis again, by
#: default: a rotation reaches every process within it.
ACTIVE_TTL_S = 1.0


class ZoneKeyring:
    """The keys of one pool namespace. Thread-safe; share one per process."""

    def __init__(
        self,
        client: redis.Redis,
        provider: KeyProvider,
        *,
        namespace: str,
        active_ttl_s: float = ACTIVE_TTL_S,
    ) -> None:
        """``active_ttl_s``: how long (seconds) the active key id and cached keys are used
        without asking Redis again. Raises InvalidIdentifier for a bad namespace."""
        namespace = check_namespace(namespace)
        if not active_ttl_s >= 0:
            raise InvalidInput("active_ttl_s must be at least 0", field="active_ttl_s")
        self._store = KeyStore(client, provider, namespace=namespace, ttl_s=active_ttl_s)
        #: Rotations and retirements not audited yet (:class:`KeyChanges`).
        self.changes = KeyChanges(client, prefix=self._store.prefix)
        self._data_keys = DataKeys(self._store, self.changes)
        self._fixed = FixedKeys(self._store)
        self._subjects = SubjectSecrets(self._store)
        #: The workers' ingest keys: current, rotated, retired (:class:`IngestKeys`).
        self.ingest = IngestKeys(self._store, self.changes)

    @property
    def ttl_s(self) -> float:
        """How long (seconds) this keyring uses what it read without asking Redis again."""
        return self._store.ttl_s

    # -- data keys ---------------------------------------------------------------------------

    def active(self, zone: Zone | str, *, fresh: bool = False) -> DataKey:
        """The key new content of ``zone`` is sealed with, made on first use
        (:meth:`DataKeys.active`)."""
        return self._data_keys.active(zone, fresh=fresh)

    def get(self, zone: Zone | str, key_id: str) -> DataKey:
        """The data key ``key_id`` of ``zone`` (:meth:`DataKeys.get`)."""
        return self._data_keys.get(zone, key_id)

    def rotate(self, zone: Zone | str) -> DataKey:
        """Make a new active key for ``zone`` and return it (:meth:`DataKeys.rotate`)."""
        return self._data_keys.rotate(zone)

    def retire(self, zone: Zone | str, key_id: str) -> None:
        """Delete the wrapped material of ``key_id`` (:meth:`DataKeys.retire`)."""
        self._data_keys.retire(zone, key_id)

    def keys(self, zone: Zone | str) -> list[KeyInfo]:
        """Every data key of ``zone``, retired ones included, oldest first."""
        return self._data_keys.keys(zone)

    # -- keys made once ----------------------------------------------------------------------

    def vector_key(self, zone: Zone | str) -> bytes:
        """The 32-byte vector key of ``zone``, never rotated (:meth:`FixedKeys.vector_key`)."""
        return self._fixed.vector_key(zone)

    def workers_signing_seed(self, initial: Callable[[], bytes | None] = lambda: None) -> bytes:
        """The workers' shared signing key (:meth:`FixedKeys.workers_signing_seed`)."""
        return self._fixed.workers_signing_seed(initial)

    # -- subjects ----------------------------------------------------------------------------

    def subject_secret(self, subject: str, *, create: bool = True) -> bytes | None:
        """The secret of ``subject``, made on first use unless ``create`` is false
        (:meth:`SubjectSecrets.secret`)."""
        return self._subjects.secret(subject, create=create)

    @property
    def generation(self) -> int:
        """Changes whenever this process drops a secret it held: a shred or retirement made
        here, or one found gone (KeyStore.generation)."""
        return self._store.generation

    def shred(self, subject: str) -> bool:
        """Delete the secret of ``subject``; True if it existed (:meth:`SubjectSecrets.shred`)."""
        return self._subjects.shred(subject)
