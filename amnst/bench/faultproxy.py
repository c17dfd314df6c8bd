"""A fault-injecting HTTP proxy, put in front of an S3 endpoint to try the service's retries.

It forwards every request to the upstream endpoint unchanged, except that,
following a seeded :class:`FaultPlan`, it answers a share of requests itself
with HTTP 500 or 503 (as S3 does under load, before any work is done), and
after a given number of requests it vanishes for a while: the listening
socket closes, so new connections are refused, and connections already open
are cut at their next request. Clients see exactly what a flaky store shows
them, over real sockets; nothing in the client is patched.

    with FaultProxy("http://127.0.0.1:5000", FaultPlan(error_share=0.2)) as proxy:
        os.environ["AWS_ENDPOINT_URL"] = proxy.url
"""

from __future__ import annotations

import http.client
import random
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

# Headers that describe one connection, not the message: never forwarded.
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
               "trailers", "transfer-encoding", "upgrade", "expect"}
_ERRORS = {500: ("InternalError", "We encountered an internal error. Please try again."),
           503: ("SlowDown", "Please reduce your request rate.")}
_UPSTREAM_TIMEOUT = 60.0


@dataclass(frozen=True)
class FaultPlan:
    """Which requests fail: a seeded share answered 500/503, and one outage.

    ``error_share`` of requests (drawn from ``seed``'s sequence, in arrival
    order) get 500 or 503, half each. The request numbered ``outage_after``
    (1-based; None: never) starts an outage of ``outage_seconds``.
    """

    error_share: float = 0.0
    outage_after: int | None = None
    outage_seconds: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.error_share < 1.0:
            raise ValueError(f"error_share={self.error_share} must be in [0, 1)")
        if self.outage_after is not None and (self.outage_after < 1 or self.outage_seconds <= 0):
            raise ValueError("an outage needs outage_after >= 1 and outage_seconds > 0")


@dataclass
class FaultCounts:
    """What the proxy did: requests seen, forwarded, answered with an error, cut, outages."""

    requests: int = 0
    forwarded: int = 0
    errors: int = 0
    cut: int = 0
    outages: int = 0

    @property
    def injected(self) -> int:
        """Faults a client met: error answers, cut requests and outages."""
        return self.errors + self.cut + self.outages


class FaultProxy:
    """A threaded HTTP proxy to ``upstream`` that injects the faults of its plan.

    ``plan`` may be replaced while it runs; the counts and the seeded draws
    start again with each new plan.
    """

    def __init__(self, upstream: str, plan: FaultPlan = FaultPlan(), host: str = "127.0.0.1",
                 port: int = 0) -> None:
        parts = urlsplit(upstream)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"upstream {upstream!r} must be an http:// URL")
        self.upstream = (parts.hostname, parts.port or 80)
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._host, self._port = host, port
        self._down = False
        self.plan = plan

    @property
    def plan(self) -> FaultPlan:
        return self._plan

    @plan.setter
    def plan(self, plan: FaultPlan) -> None:
        with self._lock:
            self._plan = plan
            self._random = random.Random(plan.seed)
            self.counts = FaultCounts()

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self._port}"

    def start(self) -> "FaultProxy":
        self._listen()
        return self

    def stop(self) -> None:
        with self._lock:
            server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()

    def __enter__(self) -> "FaultProxy":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- the plan, request by request -------------------------------------------------

    def _decide(self) -> int | str | None:
        """This request's fault: an HTTP status, "cut" (the outage starts), or None."""
        with self._lock:
            self.counts.requests += 1
            if self._down:
                self.counts.cut += 1
                return "cut"
            plan = self._plan
            if plan.outage_after == self.counts.requests:
                self.counts.outages += 1
                self.counts.cut += 1
                self._down = True
                threading.Thread(target=self._outage, args=(plan.outage_seconds,), daemon=True).start()
                return "cut"
            # Both draws are always taken, so the sequence of faults depends only on the seed.
            fails, status = self._random.random() < plan.error_share, self._random.choice((500, 503))
            if fails:
                self.counts.errors += 1
                return status
            self.counts.forwarded += 1
            return None

    def _outage(self, seconds: float) -> None:
        """Stop listening for ``seconds``, then listen again on the same port."""
        with self._lock:
            server = self._server
        if server is not None:
            server.shutdown()
            server.server_close()
        threading.Event().wait(seconds)
        with self._lock:
            self._down = False
            stopped = self._server is not server  # stop() was called meanwhile
        if not stopped:
            self._listen()

    def _listen(self) -> None:
        server = ThreadingHTTPServer((self._host, self._port), _Handler)
        # Open connections must not keep a stop or an outage waiting.
        server.daemon_threads = True
        server.block_on_close = False
        server.proxy = self  # type: ignore[attr-defined]
        with self._lock:
            self._server = server
            self._port = server.server_address[1]
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as S3 clients expect
    server: ThreadingHTTPServer

    def do_GET(self) -> None:
        self._serve()

    do_PUT = do_POST = do_DELETE = do_HEAD = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        pass  # requests carry signed headers; nothing of them goes to a log

    def _serve(self) -> None:
        body = self._request_body()
        fault = self.server.proxy._decide()  # type: ignore[attr-defined]
        if fault == "cut":
            self.close_connection = True  # no answer at all: the client sees the connection drop
        elif fault is not None:
            self._answer_error(int(fault))
        else:
            try:
                self._forward(body)
            except (OSError, http.client.HTTPException):
                self.close_connection = True  # upstream or client gone: a dropped connection

    def _request_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0], 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _answer_error(self, status: int) -> None:
        code, message = _ERRORS[status]
        body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
                f"<Message>{message}</Message></Error>").encode()
        self.send_response_only(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(0 if self.command == "HEAD" else len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _forward(self, body: bytes) -> None:
        upstream = http.client.HTTPConnection(*self.server.proxy.upstream,  # type: ignore[attr-defined]
                                              timeout=_UPSTREAM_TIMEOUT)
        try:
            upstream.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for name, value in self.headers.items():
                if name.lower() not in _HOP_BY_HOP and name.lower() != "content-length":
                    upstream.putheader(name, value)
            if body or self.command in ("PUT", "POST"):
                upstream.putheader("Content-Length", str(len(body)))
            upstream.endheaders(body or None)
            response = upstream.getresponse()
            # Read whole, so that the length is known whatever framing upstream chose.
            data = b"" if self.command == "HEAD" else response.read()
            self.send_response_only(response.status, response.reason)
            for name, value in response.getheaders():
                if name.lower() not in _HOP_BY_HOP and (self.command == "HEAD"
                                                        or name.lower() != "content-length"):
                    self.send_header(name, value)
            if self.command != "HEAD":
                self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        finally:
            upstream.close()
