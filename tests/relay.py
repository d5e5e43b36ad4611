"""A TCP relay to a real Redis that holds back what passes one way, so that a test can lose a
reply (the command ran, its caller timed out, or its connection broke) or delay a request (it
runs after its caller gave up)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from dataclasses import dataclass

from hivemem.pool.redis_server import EmbeddedRedis


@dataclass
class _Connection:
    """One relayed connection's own state: its next reply is to be lost (``dropping``), or held
    for ``hold_reply`` seconds."""

    dropping: bool = False
    hold_reply: float = 0.0


class Relay:
    """Relays connections to Redis on ``port``. It can hold every request for
    ``hold_requests`` seconds, or the next reply for ``hold_reply`` seconds; ``hold_reply_to``
    and ``hold_request_with`` (bytes, seconds) do the same once, for the reply to the next
    request that carries those bytes (a script's SHA, say) or for that request itself;
    ``hold_requests_from`` (bytes, seconds) sets ``hold_requests`` at the next request that
    carries those bytes, so that it and every later one are held (Redis stops answering).
    ``drop_reply_to`` (bytes) closes, once, the connection of the next request that carries
    those bytes when its reply comes back, instead of passing the reply on: the command ran,
    and its caller gets ConnectionError at once, whatever its socket timeout."""

    def __init__(self, port: int) -> None:
        self._upstream = port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.hold_reply = self.hold_requests = 0.0
        self.hold_reply_to: tuple[bytes, float] | None = None
        self.hold_request_with: tuple[bytes, float] | None = None
        self.hold_requests_from: tuple[bytes, float] | None = None
        self.drop_reply_to: bytes | None = None
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, server: EmbeddedRedis) -> str:
        """``server``'s URL, through this relay."""
        return server.url.replace(f":{server.port}", f":{self.port}")

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self._upstream))
            state = _Connection()
            threading.Thread(
                target=self._pump, args=(client, server, "requests", state), daemon=True
            ).start()
            threading.Thread(
                target=self._pump, args=(server, client, "replies", state), daemon=True
            ).start()

    def _pump(
        self, source: socket.socket, sink: socket.socket, way: str, state: _Connection
    ) -> None:
        while True:
            try:
                data = source.recv(65536)
            except OSError:
                data = b""
            if way == "replies":
                if state.dropping:
                    self._drop(source, sink)
                    return
                held, self.hold_reply = self.hold_reply, 0.0
                held, state.hold_reply = max(held, state.hold_reply), 0.0
                time.sleep(held)
            else:
                if self.drop_reply_to is not None and self.drop_reply_to in data:
                    self.drop_reply_to = None
                    state.dropping = True
                self._requested(data, state)
            try:
                if not data:
                    sink.shutdown(socket.SHUT_WR)
                    return
                sink.sendall(data)
            except OSError:
                return

    def _requested(self, data: bytes, state: _Connection) -> None:
        """Hold a request as asked, or arm the hold of its reply (on its own connection: a
        reply on another one, such as a lock renewal's, passes)."""
        if self.hold_reply_to is not None and self.hold_reply_to[0] in data:
            state.hold_reply, self.hold_reply_to = self.hold_reply_to[1], None
        if self.hold_request_with is not None and self.hold_request_with[0] in data:
            held, self.hold_request_with = self.hold_request_with[1], None
            time.sleep(held)
        if self.hold_requests_from is not None and self.hold_requests_from[0] in data:
            self.hold_requests, self.hold_requests_from = self.hold_requests_from[1], None
        time.sleep(self.hold_requests)

    @staticmethod
    def _drop(*ends: socket.socket) -> None:
        """Close both ends of a connection: the client reads the end of its stream."""
        for end in ends:
            with contextlib.suppress(OSError):  # the other side may have closed it already
                end.shutdown(socket.SHUT_RDWR)
            end.close()

    def close(self) -> None:
        self._listener.close()
