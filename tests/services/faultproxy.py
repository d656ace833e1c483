"""A TCP proxy of the tests' own that injects faults between the app and a service.

It listens on a free 127.0.0.1 port and forwards to an upstream (OpenBao's or
moto's HTTP port, a private database server's port). Its mode can be switched
while the app runs:

- ``pass_through()``: forward both ways (connections that went into the black
  hole are reset);
- ``refuse()``: the port is closed (a new connection is refused) and the open
  connections are reset, as when the service is down;
- ``reset()``: accept, then close at once (the service crashes on every connection);
- ``blackhole()``: accept and read, never answer (a dropped route, a hung service);
- ``delay(seconds)``: forward, but hold each response ``seconds`` before passing it on;
- ``http_error(status)``: answer each HTTP request itself with ``status`` (a 5xx or
  429) and ``Connection: close``, without asking the upstream.

A mode applies to open connections too (HTTP clients keep theirs alive). The
proxy counts the connections it accepted and the HTTP requests it saw, so a
test can tell how often the app asked the service. Standard library only,
one thread per direction of each connection.
"""

from __future__ import annotations

import contextlib
import re
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

PASS, DELAY, REFUSE, RESET, BLACKHOLE, HTTP_ERROR = (
    "pass",
    "delay",
    "refuse",
    "reset",
    "blackhole",
    "http_error",
)

_REQUEST_LINE = re.compile(rb"^[A-Z]{3,7} \S+ HTTP/1\.[01]\r\n")
_REASONS = {
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}
_CHUNK = 65536
_POLL = 0.05


@dataclass
class ProxyStats:
    """What the proxy has seen since it started (or since :meth:`FaultProxy.reset_stats`)."""

    connections: int = 0  # accepted
    requests: int = 0  # HTTP request lines seen, whatever the mode did with them
    resets: int = 0  # connections closed at once (reset mode)
    errors_sent: int = 0  # HTTP error responses given by the proxy itself

    @property
    def attempts(self) -> int:
        """How many times the app tried the service: each request seen, and each
        connection that was reset before it could send one."""
        return self.requests + self.resets


def _abort(sock: socket.socket) -> None:
    """Close ``sock`` with a reset (RST), as a crashed server's kernel would. The
    shutdown wakes a thread blocked reading it (a close alone would not)."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


class _Link:
    """One client connection and, once forwarded, its upstream connection."""

    def __init__(self, client: socket.socket) -> None:
        self.client = client
        self.upstream: socket.socket | None = None
        self.black = False  # a request went into the black hole: never answer on it
        self.pending_since: float | None = None  # a request was forwarded (for delay)
        self.closed = threading.Event()

    def close(self, *, abort: bool = False) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        for sock in (self.client, self.upstream):
            if sock is None:
                continue
            if abort:
                _abort(sock)
            else:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    sock.close()


class FaultProxy:
    """A proxy to ``upstream_host:upstream_port`` on ``127.0.0.1:<port>``; see the module doc."""

    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1", *, name: str = "") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.name = name or f"proxy to {upstream_host}:{upstream_port}"
        self.stats = ProxyStats()
        self._mode = PASS
        self._delay = 0.0
        self._status = 503
        self._body = b""
        self._content_type = "application/json"
        self._lock = threading.Lock()
        self._links: set[_Link] = set()
        self._stopped = threading.Event()
        self._want_listening = True
        self._listening = threading.Event()
        self._closed = threading.Event()
        # Bind now, so that the port is known (and kept) before start().
        self._listener: socket.socket | None = self._bind(0)
        self.port = int(self._listener.getsockname()[1])
        self._thread = threading.Thread(target=self._serve, name=f"faultproxy:{self.port}", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def mode(self) -> str:
        return self._mode

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> FaultProxy:
        self._thread.start()
        if not self._listening.wait(5):
            raise RuntimeError(f"{self.name}: did not start listening")
        return self

    def stop(self) -> None:
        """Stop listening and close every connection (a blocked client gets an error)."""
        self._stopped.set()
        self._drop_links(abort=True)
        self._thread.join(5)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- modes -------------------------------------------------------------------------

    def pass_through(self) -> None:
        """Forward again. Connections whose requests went into the black hole are
        reset (as a service that comes back does), so that their clients retry."""
        self._set(PASS)
        with self._lock:
            black = [link for link in self._links if link.black]
            self._links.difference_update(black)
        for link in black:
            link.close(abort=True)

    def delay(self, seconds: float) -> None:
        """Forward, but hold each response ``seconds`` before passing it on."""
        self._delay = float(seconds)
        self._set(DELAY)

    def refuse(self) -> None:
        """Close the port (connections are refused) and reset the open connections."""
        self._set(REFUSE)

    def reset(self) -> None:
        """Accept connections and close them at once; reset the open ones."""
        self._set(RESET)

    def blackhole(self) -> None:
        """Accept and read, never answer, on new and open connections alike."""
        self._set(BLACKHOLE)

    def http_error(
        self, status: int = 503, body: bytes = b"", content_type: str = "application/json"
    ) -> None:
        """Answer every HTTP request with ``status`` (and ``body``), then close the connection."""
        self._status = status
        self._body = body or b'{"message": "fault injected by the tests\' proxy"}'
        self._content_type = content_type
        self._set(HTTP_ERROR)

    def set_upstream(self, port: int, host: str = "127.0.0.1") -> None:
        """Send new connections to another upstream; the open ones are closed."""
        self.upstream = (host, port)
        self._drop_links(abort=True)

    def reset_stats(self) -> ProxyStats:
        """Start counting afresh; return what was counted until now."""
        with self._lock:
            old, self.stats = self.stats, ProxyStats()
        return old

    @contextlib.contextmanager
    def fault(self, mode: str, **kwargs: float) -> Iterator[FaultProxy]:
        """``mode`` (a method name: "refuse", "blackhole", ...) within the block, then pass."""
        getattr(self, mode)(**kwargs)
        try:
            yield self
        finally:
            self.pass_through()

    def _set(self, mode: str) -> None:
        self._mode = mode
        if mode in (REFUSE, RESET):
            self._drop_links(abort=True)
        want = mode != REFUSE
        if want != self._want_listening:
            self._want_listening = want
            event = self._listening if want else self._closed
            if not event.wait(5):
                raise RuntimeError(f"{self.name}: the listening socket did not follow mode {mode}")

    def _count(self, **counts: int) -> None:
        with self._lock:
            for key, value in counts.items():
                setattr(self.stats, key, getattr(self.stats, key) + value)

    # -- the listening socket ----------------------------------------------------------

    def _bind(self, port: int) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(128)
        sock.settimeout(_POLL)
        return sock

    def _serve(self) -> None:
        """Accept connections; close and re-open the port as the mode asks.
        Only this thread touches the listening socket."""
        try:
            while not self._stopped.is_set():
                if self._want_listening and self._listener is None:
                    self._listener = self._bind(self.port)
                elif not self._want_listening and self._listener is not None:
                    self._listener.close()
                    self._listener = None
                if self._listener is None:
                    self._listening.clear()
                    self._closed.set()
                    time.sleep(_POLL)
                    continue
                self._closed.clear()
                self._listening.set()
                try:
                    client, _ = self._listener.accept()
                except TimeoutError:
                    continue
                except OSError:
                    continue
                self._count(connections=1)
                self._accepted(client)
        finally:
            if self._listener is not None:
                self._listener.close()
                self._listener = None

    def _accepted(self, client: socket.socket) -> None:
        mode = self._mode
        if mode in (REFUSE, RESET):
            self._count(resets=1)
            _abort(client)
            return
        client.settimeout(None)
        link = _Link(client)
        with self._lock:
            self._links.add(link)
        if mode in (PASS, DELAY):
            try:
                link.upstream = socket.create_connection(self.upstream, timeout=5)
                link.upstream.settimeout(None)
            except OSError:
                self._forget(link, abort=True)  # the upstream itself is down
                return
            self._spawn(self._upstream_to_client, link)
        self._spawn(self._client_to_upstream, link)

    def _spawn(self, target: object, link: _Link) -> None:
        threading.Thread(target=target, args=(link,), daemon=True).start()  # type: ignore[arg-type]

    def _forget(self, link: _Link, *, abort: bool = False) -> None:
        link.close(abort=abort)
        with self._lock:
            self._links.discard(link)

    def _drop_links(self, *, abort: bool) -> None:
        with self._lock:
            links = list(self._links)
            self._links.clear()
        for link in links:
            link.close(abort=abort)

    # -- the two directions of a connection --------------------------------------------

    def _client_to_upstream(self, link: _Link) -> None:
        try:
            while not link.closed.is_set():
                data = link.client.recv(_CHUNK)
                if not data:
                    break
                if _REQUEST_LINE.match(data):
                    self._count(requests=1)
                mode = self._mode
                if mode == BLACKHOLE or link.black:
                    link.black = True
                    continue
                if mode == HTTP_ERROR:
                    self._answer_error(link, data)
                    return
                if mode in (REFUSE, RESET) or link.upstream is None:
                    self._forget(link, abort=True)
                    return
                if mode == DELAY:
                    link.pending_since = time.monotonic()
                link.upstream.sendall(data)
        except OSError:
            pass
        self._forget(link)

    def _upstream_to_client(self, link: _Link) -> None:
        assert link.upstream is not None
        try:
            while not link.closed.is_set():
                data = link.upstream.recv(_CHUNK)
                if not data:
                    break
                if self._mode == BLACKHOLE or link.black:
                    link.black = True
                    continue
                if self._mode == DELAY and link.pending_since is not None:
                    link.pending_since = None
                    if link.closed.wait(self._delay):
                        return
                link.client.sendall(data)
        except OSError:
            pass
        self._forget(link)

    def _answer_error(self, link: _Link, first: bytes) -> None:
        """Read the rest of the request (head and Content-Length body), answer, close."""
        data = first
        link.client.settimeout(5)
        try:
            while b"\r\n\r\n" not in data:
                more = link.client.recv(_CHUNK)
                if not more:
                    break
                data += more
            head, _, body = data.partition(b"\r\n\r\n")
            length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
            needed = int(length.group(1)) if length else 0
            while len(body) < needed:
                more = link.client.recv(_CHUNK)
                if not more:
                    break
                body += more
            reason = _REASONS.get(self._status, "Error")
            response = (
                f"HTTP/1.1 {self._status} {reason}\r\n"
                f"Content-Type: {self._content_type}\r\n"
                f"Content-Length: {len(self._body)}\r\n"
                "Connection: close\r\n\r\n"
            ).encode() + self._body
            self._count(errors_sent=1)
            link.client.sendall(response)
            link.client.shutdown(socket.SHUT_WR)
            # Let the client read the answer before the socket goes.
            while link.client.recv(_CHUNK):
                pass
        except OSError:
            pass
        self._forget(link)
