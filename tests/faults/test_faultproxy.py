"""The fault proxy itself, against a small HTTP server and the private PostgreSQL server."""

from __future__ import annotations

import http.client
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psycopg
import pytest

from tests.services.faultproxy import FaultProxy
from tests.services.postgres import PrivatePostgres

pytestmark = pytest.mark.faults


class Upstream(ThreadingHTTPServer):
    daemon_threads = True
    hits = 0


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the SDKs use it

    def do_GET(self) -> None:
        assert isinstance(self.server, Upstream)
        self.server.hits += 1
        body = b"ok"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    server = Upstream(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def proxy(upstream: Upstream) -> Iterator[FaultProxy]:
    with FaultProxy(upstream.server_address[1]) as proxy:
        yield proxy


def get(conn: http.client.HTTPConnection) -> tuple[int, bytes, str | None]:
    conn.request("GET", "/")
    response = conn.getresponse()
    return response.status, response.read(), response.getheader("Connection")


def connect(proxy: FaultProxy, timeout: float = 2.0) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=timeout)


def test_passes_requests_and_counts_them(proxy: FaultProxy, upstream: Upstream) -> None:
    conn = connect(proxy)
    assert get(conn)[:2] == (200, b"ok")
    assert get(conn)[:2] == (200, b"ok")  # the same kept-alive connection
    conn.close()
    assert (proxy.stats.connections, proxy.stats.requests, upstream.hits) == (1, 2, 2)


def test_answers_http_errors_itself(proxy: FaultProxy, upstream: Upstream) -> None:
    kept = connect(proxy)
    assert get(kept)[0] == 200
    for status in (503, 429, 500):
        proxy.http_error(status)
        assert get(connect(proxy))[0::2] == (status, "close")
    assert get(kept)[0] == 500  # an open connection gets the fault too
    assert upstream.hits == 1
    assert proxy.stats.errors_sent == 4
    proxy.pass_through()
    assert get(connect(proxy))[0] == 200


def test_refuse_closes_the_port_and_reopens_it(proxy: FaultProxy) -> None:
    kept = connect(proxy)
    assert get(kept)[0] == 200
    proxy.refuse()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", proxy.port), timeout=2)
    with pytest.raises((ConnectionError, http.client.HTTPException)):
        get(kept)  # the open connection was reset
    proxy.pass_through()
    assert get(connect(proxy))[0] == 200


def test_reset_closes_each_connection_at_once(proxy: FaultProxy) -> None:
    proxy.reset()
    with pytest.raises((ConnectionError, http.client.HTTPException)):
        get(connect(proxy))
    assert proxy.stats.resets == 1 and proxy.stats.attempts == 1


def test_blackhole_reads_and_never_answers(proxy: FaultProxy, upstream: Upstream) -> None:
    kept = connect(proxy, timeout=0.5)
    assert get(kept)[0] == 200
    proxy.blackhole()
    for conn in (kept, connect(proxy, timeout=0.5)):
        with pytest.raises(TimeoutError):
            get(conn)
    assert proxy.stats.requests == 3 and upstream.hits == 1
    proxy.pass_through()
    assert get(connect(proxy))[0] == 200


def test_pass_through_resets_black_holed_connections(proxy: FaultProxy) -> None:
    """A client waiting on a black-holed request gets an error when the service is back."""
    kept = connect(proxy, timeout=5)
    assert get(kept)[0] == 200
    proxy.blackhole()
    failed: list[BaseException] = []

    def waiting() -> None:
        try:
            get(kept)
        except (OSError, http.client.HTTPException) as exc:
            failed.append(exc)

    thread = threading.Thread(target=waiting)
    thread.start()
    assert wait_for(lambda: proxy.stats.requests == 2)
    started = time.monotonic()
    proxy.pass_through()
    thread.join(5)
    assert failed and not isinstance(failed[0], TimeoutError), failed
    assert time.monotonic() - started < 2


def wait_for(predicate: Callable[[], bool], timeout: float = 5) -> bool:
    end = time.monotonic() + timeout
    while not predicate() and time.monotonic() < end:
        time.sleep(0.02)
    return predicate()


def test_delay_holds_responses(proxy: FaultProxy) -> None:
    proxy.delay(0.8)
    started = time.monotonic()
    assert get(connect(proxy))[0] == 200
    assert time.monotonic() - started >= 0.8
    with pytest.raises(TimeoutError):
        get(connect(proxy, timeout=0.3))


def test_a_database_through_the_proxy(pg_server: PrivatePostgres) -> None:
    with FaultProxy(pg_server.port) as proxy:
        dsn = f"host=127.0.0.1 port={proxy.port} user=postgres dbname=postgres connect_timeout=2"
        with psycopg.connect(dsn) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
            proxy.refuse()
            with pytest.raises(psycopg.OperationalError):
                conn.execute("SELECT 1")  # the session was reset
        with pytest.raises(psycopg.OperationalError, match="refused"):
            psycopg.connect(dsn)
        proxy.blackhole()
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(dsn)  # connect_timeout honoured
        assert proxy.stats.connections == 2
