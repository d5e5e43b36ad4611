"""The keys made once per namespace and never rotated: each zone's vector key and the workers'
signing key. :class:`FixedKeys` is the service behind
:class:`~hivemem.security.keyring.ZoneKeyring`'s methods for them.

They live in ``<ns>:keys:vector:<zone>`` and ``<ns>:keys:signing:workers``, strings holding a
wrapped entry. Each is made with ``SET NX``: the loser of a race uses the winner's. Once read, a
process keeps them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import cast

import structlog

from hivemem.pool.adapters.redis_errors import redis_errors
from hivemem.pool.enums import Zone, checked_zone
from hivemem.security.key_store import KeyStore, stored_bytes

log = structlog.get_logger(__name__)

#: The key id bound into the wrap of each secret made once (vector keys, the signing key).
_FIXED_ID = {"vector": "vector", "signing": "signing"}


class FixedKeys:
    """The vector keys and the workers' signing key of one namespace. Thread-safe."""

    def __init__(self, store: KeyStore) -> None:
        self._store = store
        self._lock = threading.Lock()
        self._fixed: dict[str, bytes] = {}  # Redis key -> secret made once

    def vector_key(self, zone: Zone | str) -> bytes:
        """The 32-byte vector key of ``zone``, made once (atomically) and never rotated:
        rotating it would change every derived vector, i.e. need a re-index of the zone."""
        zone = checked_zone(zone)
        return self._made_once("vector", str(zone), f"{self._store.prefix}vector:{zone}")

    def workers_signing_seed(self, initial: Callable[[], bytes | None] = lambda: None) -> bytes:
        """The 32-byte private key every worker of the namespace signs with (Ed25519), made
        once (atomically: ``initial()``, asked only then, or a random one) and never
        rotated."""
        return self._made_once("signing", "", f"{self._store.prefix}signing:workers", initial)

    def _made_once(
        self,
        kind: str,
        zone: str,
        name: str,
        initial: Callable[[], bytes | None] = lambda: None,
    ) -> bytes:
        """The secret of ``kind`` stored (wrapped) at ``name``, made once (``initial()``, else
        random), never rotated."""
        context = self._store.context(kind, zone, _FIXED_ID[kind])

        def made() -> bytes:
            entry = self._store.new_entry(kind, zone, _FIXED_ID[kind], secret=initial())
            return entry[2].encode()

        return self._stored_once(name, made, lambda raw: self._store.unwrap(raw, context))

    def _stored_once(
        self, name: str, made: Callable[[], bytes], read: Callable[[bytes], bytes]
    ) -> bytes:
        """What ``read`` makes of the value at ``name``: the first keyring to ask stores
        ``made()`` there with ``SET NX`` (the loser of a race reads the winner's); then kept in
        this process."""
        with self._lock:
            known = self._fixed.get(name)
        if known is not None:
            return known
        with redis_errors():
            raw = cast("bytes | str | None", self._store.client.get(name))
            if raw is None:
                if self._store.client.set(name, made(), nx=True):
                    log.info("key_material_created", key=name)
                raw = cast("bytes | str | None", self._store.client.get(name))
        value = read(stored_bytes(raw or b""))
        with self._lock:
            self._fixed[name] = value
        return value
