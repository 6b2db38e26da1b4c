"""A loopback HTTP proxy in front of a real server that loses answers after the server committed.

``FaultProxy(upstream)`` forwards every request. ``fail_next(method, path_regex, fault)`` arms
one fault for the next matching request: ``"504"`` forwards it, lets the upstream answer, then
answers 504 (a gateway that gave up after the work was done); ``"timeout"`` forwards it, then
holds the answer back ``hold_s`` seconds and drops the connection (the client's read timeout);
``"drop_one"`` forwards it and answers the upstream's JSON less the first element of its
``items`` (a search answer short of one record; ``total`` left as it was), kept in ``dropped``.
``hits`` counts matching requests per armed pattern, so a test sees what was sent again.
``delay(method, path_regex, seconds)`` holds every matching answer that long after the upstream
gave it (a slow network: the window between a server's commit and the client's knowing widens).
"""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self

import httpx

_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding", "host",
        "accept-encoding", "proxy-connection", "te", "upgrade", "date", "server"}


class FaultProxy:
    def __init__(self, upstream: str, *, hold_s: float = 5.0) -> None:
        self.upstream = upstream.rstrip("/")
        self.hold_s = hold_s
        self.hits: dict[str, int] = {}
        self.dropped: list[object] = []
        self._faults: list[tuple[str, re.Pattern[str], str]] = []
        self._delays: list[tuple[str, re.Pattern[str], float]] = []
        self._lock = threading.Lock()
        self._http = httpx.Client(base_url=self.upstream, timeout=120)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._http.close()

    def fail_next(self, method: str, path_regex: str, fault: str = "504") -> None:
        """Arm one fault for the next ``method`` request whose path matches ``path_regex``."""
        with self._lock:
            self.hits.setdefault(path_regex, 0)
            self._faults.append((method, re.compile(path_regex), fault))

    def delay(self, method: str, path_regex: str, seconds: float) -> None:
        """Hold every later ``method`` answer whose path matches ``seconds`` after the upstream gave it."""
        with self._lock:
            self._delays.append((method, re.compile(path_regex), seconds))

    def _delay_s(self, method: str, path: str) -> float:
        with self._lock:
            return sum(s for m, rx, s in self._delays if m == method and rx.search(path))

    def _take(self, method: str, path: str) -> str | None:
        with self._lock:
            for pattern in self.hits:
                if re.search(pattern, path):
                    self.hits[pattern] += 1
            for i, (m, rx, fault) in enumerate(self._faults):
                if m == method and rx.search(path):
                    del self._faults[i]
                    return fault
        return None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                fault = proxy._take(self.command, self.path)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
                resp = proxy._http.request(self.command, self.path, headers=headers, content=body)
                if hold := proxy._delay_s(self.command, self.path):
                    time.sleep(hold)
                if fault == "timeout":
                    time.sleep(proxy.hold_s)
                    self.close_connection = True
                    return
                status, content = (504, b"upstream answer lost (injected)") if fault == "504" else (
                    resp.status_code, resp.content)
                if fault == "drop_one" and resp.status_code == 200:
                    answer = resp.json()
                    if answer.get("items"):
                        proxy.dropped.append(answer["items"].pop(0))
                    content = json.dumps(answer).encode()
                self.send_response(status)
                for k, v in resp.headers.items():
                    if k.lower() not in _HOP and fault in (None, "drop_one"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

            def log_message(self, *args: object) -> None:
                pass

        return Handler
