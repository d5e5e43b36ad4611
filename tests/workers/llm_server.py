"""A real OpenAI-compatible chat endpoint for tests: an HTTP server on 127.0.0.1 (a free port) in
a thread, answering ``POST /v1/chat/completions`` with the replies a test scripted, in order, and
recording every request it received. Unscripted requests get HTTP 500."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self


@dataclass(frozen=True, slots=True)
class Reply:
    """One scripted answer: status, raw body, and how long to wait before sending it."""

    status: int = 200
    body: bytes = b""
    delay_s: float = 0.0
    #: Seconds between the body's bytes, sent one at a time (0: all at once).
    drip_s: float = 0.0
    #: Seconds between the status line's and headers' bytes, sent one at a time (0: at once).
    header_drip_s: float = 0.0


def chat(content: str | dict[str, Any], *, delay_s: float = 0.0) -> Reply:
    """A chat completion whose message content is ``content`` (a dict is sent as JSON text)."""
    text = content if isinstance(content, str) else json.dumps(content)
    body = {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
            }
        ],
    }
    return Reply(body=json.dumps(body).encode(), delay_s=delay_s)


def error(status: int, text: str = "server error") -> Reply:
    """An HTTP error with a plain-text body."""
    return Reply(status=status, body=text.encode())


@dataclass(frozen=True, slots=True)
class Request:
    """What the server received: path, headers (lower-case names) and the JSON body."""

    path: str
    headers: dict[str, str]
    body: dict[str, Any]


class ChatServer:
    """The scripted endpoint; use as a context manager (it starts on enter, stops on exit)."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self._script: list[Reply] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def script(self, *replies: Reply) -> None:
        """Queue ``replies``: each request takes the next one."""
        with self._lock:
            self._script.extend(replies)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopping.set()  # cuts short the replies still waiting out their delay
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def _take(self, request: Request) -> Reply:
        with self._lock:
            self.requests.append(request)
            return self._script.pop(0) if self._script else error(500, "unscripted request")

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                headers = {k.lower(): v for k, v in self.headers.items()}
                reply = server._take(Request(self.path, headers, json.loads(raw or b"{}")))
                if reply.delay_s and server._stopping.wait(reply.delay_s):
                    return
                if reply.header_drip_s:
                    head = (
                        f"HTTP/1.1 {reply.status} OK\r\nContent-Type: application/json\r\n"
                        f"Content-Length: {len(reply.body)}\r\n\r\n"
                    ).encode()
                    try:
                        for at in range(len(head)):
                            self.wfile.write(head[at : at + 1])
                            self.wfile.flush()
                            if server._stopping.wait(reply.header_drip_s):
                                return
                        self.wfile.write(reply.body)
                    except (BrokenPipeError, ConnectionResetError):
                        pass
                    return
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(reply.body)))
                    self.end_headers()
                    if not reply.drip_s:
                        self.wfile.write(reply.body)
                    for at in range(len(reply.body) if reply.drip_s else 0):
                        self.wfile.write(reply.body[at : at + 1])
                        self.wfile.flush()
                        if server._stopping.wait(reply.drip_s):
                            return
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (its timeout): nothing to answer

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler
