"""One scenario of the demo, in a process of its own: the project in this folder, set up
for one source on one engine (see ``settings.py``), served on a WSGI server with a
pool of worker threads on 127.0.0.1, under load through both aliases at once.

    python examples/demo/scenario.py --seconds 10 --threads 3

``run.py`` starts it with the environment the settings read, and rotates the
credential while it runs. It speaks JSON lines on stdout: ``ready`` when it
serves, ``progress`` about twice a second, and ``result`` at the end.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def emit(event: str, **data: Any) -> None:
    print(json.dumps({"event": event, **data}), flush=True)


# -- the web server ---------------------------------------------------------------------


class PooledWSGIServer(WSGIServer):
    """Requests handled by a fixed pool of threads, as gunicorn's gthread workers do:
    Django's connections are per thread, so persistent ones (``CONN_MAX_AGE``) are
    kept between the requests a thread serves."""

    request_queue_size = 128
    workers = 8

    def server_activate(self) -> None:
        super().server_activate()
        self.pool = concurrent.futures.ThreadPoolExecutor(self.workers, thread_name_prefix="wsgi")

    def process_request(self, request: Any, client_address: Any) -> None:
        self.pool.submit(self._handle, request, client_address)

    def _handle(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)

    def server_close(self) -> None:
        super().server_close()
        self.pool.shutdown(wait=True)


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def serve(app: WSGIApplication) -> Iterator[str]:
    server = make_server("127.0.0.1", 0, app, server_class=PooledWSGIServer, handler_class=QuietHandler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/whoami"
    finally:
        server.shutdown()
        server.server_close()


# -- the clients ------------------------------------------------------------------------


@dataclasses.dataclass
class Tally:
    ok: int = 0
    failed: int = 0
    users: set[str] = dataclasses.field(default_factory=set)
    errors: Counter[str] = dataclasses.field(default_factory=Counter)
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)

    def add(self, user: str | None, error: str | None) -> None:
        with self.lock:
            if error is None and user is not None:
                self.ok += 1
                self.users.add(user)
            else:
                self.failed += 1
                self.errors[error or "no user"] += 1


def request(url: str) -> tuple[str | None, str | None]:
    """One request: (the database user that answered, None) or (None, what went wrong)."""
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            body = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        try:
            return None, str(json.loads(exc.read()).get("error", f"HTTP {exc.code}"))
        except ValueError:
            return None, f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        return None, f"{type(exc).__name__}: {exc}"
    return body.get("user"), None


def load(url: str, tally: Tally, *, threads: int, until: float, pause: float) -> list[threading.Thread]:
    """``threads`` clients, each issuing requests one after another until ``until``."""

    def client() -> None:
        while time.monotonic() < until:
            tally.add(*request(url))
            time.sleep(pause)

    workers = [threading.Thread(target=client, daemon=True) for _ in range(threads)]
    for worker in workers:
        worker.start()
    return workers


# -- the scenario -------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=3, help="client threads per alias")
    parser.add_argument("--pause", type=float, default=0.01, help="seconds between a client's requests")
    args = parser.parse_args(argv)

    from django.core.wsgi import get_wsgi_application

    app = get_wsgi_application()  # django.setup(): the settings read the stock credential now
    from django.conf import settings

    from iamdb import metrics

    iamdb, stock = Tally(), Tally()
    with serve(app) as url:
        for alias, tally in (("default", iamdb), ("stock", stock)):  # the first request of each
            tally.add(*request(f"{url}?db={alias}"))
        emit("ready")
        started = time.monotonic()
        until = started + args.seconds
        workers = [
            *load(url, iamdb, threads=args.threads, until=until, pause=args.pause),
            *load(f"{url}?db=stock", stock, threads=args.threads, until=until, pause=args.pause),
        ]
        while any(worker.is_alive() for worker in workers):
            emit(
                "progress",
                elapsed=round(time.monotonic() - started, 1),
                ok=iamdb.ok,
                failed=iamdb.failed,
                stock_ok=stock.ok,
                stock_failed=stock.failed,
            )
            for worker in workers:
                worker.join(0.5 / len(workers))
        for worker in workers:
            worker.join()

    source = settings.DATABASES["default"]["PASSWORD"]
    counts = metrics.snapshot().get(("default", source.describe()), metrics.Counts())
    stats = getattr(source, "stats", None)
    emit(
        "result",
        seconds=round(time.monotonic() - started, 1),
        source=source.describe(),
        ok=iamdb.ok,
        failed=iamdb.failed,
        errors=iamdb.errors.most_common(3),
        users=len(iamdb.users),
        fetches=counts.fetches,
        refused=counts.logins_refused,
        retired=counts.retirements,
        leases=getattr(stats, "leases_issued", None),
        stock_ok=stock.ok,
        stock_failed=stock.failed,
        stock_errors=stock.errors.most_common(2),
    )
    return 0


if __name__ == "__main__":
    socket.setdefaulttimeout(30)
    sys.exit(main())
