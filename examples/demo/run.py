"""The demo: a Django app keeps answering while its database password rotates.

    python examples/demo/run.py [--engine mysql|postgresql|both] [--seconds 20]

For each engine, with a database user of its own (on the machine's MariaDB, or on
a private PostgreSQL server that checks passwords), this serves the project in
this folder on a threaded WSGI server on 127.0.0.1, and:

1. for contrast, runs a few seconds of load through Django's own backend with the
   password read once at startup, across one rotation;
2. runs the load through iamdb's backend, whose PASSWORD is a ``CallableSource``
   reading the published secret, while a rotator changes the user's password on
   the server every couple of seconds and publishes it a moment later (the
   server first, the secret after: the order real rotations have).

It prints requests ok / failed, rotations and credential fetches, and exits
non-zero if any request through iamdb failed. Users and servers it made are
removed at the end.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import logging
import os
import secrets
import shutil
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

ENGINES = ("mysql", "postgresql")


def new_password() -> str:
    return secrets.token_urlsafe(18)


# -- the database -------------------------------------------------------------------


@dataclasses.dataclass
class Database:
    label: str
    host: str
    port: int
    name: str
    user: str
    password: str
    set_password: Callable[[str], None]


@contextmanager
def database(engine: str) -> Iterator[Database]:
    """A user of the demo's own, removed afterwards (with the private server, for PostgreSQL)."""
    from tests.services.mysql import MysqlAdmin
    from tests.services.postgres import PrivatePostgres

    user = f"iamdb_demo_{secrets.token_hex(4)}"
    password = new_password()
    if engine == "mysql":
        admin = MysqlAdmin()
        admin.create_user(user, password, databases=())
        try:
            yield Database(
                "MariaDB, the machine's server",
                admin.host,
                admin.port,
                "",
                user,
                password,
                lambda new: admin.set_password(user, new),
            )
        finally:
            admin.drop_user(user)
    else:
        server = PrivatePostgres().start()
        try:
            server.create_role(user, password)
            yield Database(
                "PostgreSQL, a private scram-sha-256 server",
                "127.0.0.1",
                server.port,
                "postgres",
                user,
                password,
                lambda new: server.set_password(user, new),
            )
        finally:
            server.stop()


# -- the web server and its clients ---------------------------------------------------


class ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True
    request_queue_size = 128


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def serve(app: WSGIApplication) -> Iterator[str]:
    server = make_server("127.0.0.1", 0, app, server_class=ThreadingWSGIServer, handler_class=QuietHandler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/whoami"
    finally:
        server.shutdown()
        server.server_close()


@dataclasses.dataclass
class Tally:
    ok: int = 0
    failed: int = 0
    errors: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)

    def add(self, error: str | None) -> None:
        with self.lock:
            if error is None:
                self.ok += 1
            else:
                self.failed += 1
                self.errors[error] += 1

    def first_error(self) -> str:
        return self.errors.most_common(1)[0][0] if self.errors else ""


def request(url: str, expected_user: str) -> str | None:
    """One request; None if it answered with the expected user, else what went wrong."""
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            body = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        try:
            return str(json.loads(exc.read()).get("error", f"HTTP {exc.code}"))
        except ValueError:
            return f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        return f"{type(exc).__name__}: {exc}"
    if body.get("user") != expected_user:
        return f"unexpected user {body.get('user')!r}"
    return None


def load(url: str, expected_user: str, *, threads: int, seconds: float) -> Tally:
    """``threads`` clients issuing requests one after another for ``seconds``."""
    tally = Tally()
    deadline = time.monotonic() + seconds

    def client() -> None:
        while time.monotonic() < deadline:
            tally.add(request(url, expected_user))

    workers = [threading.Thread(target=client) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return tally


class Rotator:
    """Changes the password on the server, then publishes it ``publish_delay`` later."""

    def __init__(self, db: Database, publish: Callable[[str], None], publish_delay: float) -> None:
        self.db = db
        self.publish = publish
        self.publish_delay = publish_delay
        self.rotations = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def rotate(self) -> None:
        password = new_password()
        self.db.set_password(password)  # the server changes first...
        time.sleep(self.publish_delay)
        self.publish(password)  # ...the secret store catches up a moment later
        self.rotations += 1

    def start(self, interval: float) -> None:
        def loop() -> None:
            started = time.monotonic()
            while not self._stop.wait(max(interval - (time.monotonic() - started), 0.0)):
                started = time.monotonic()
                self.rotate()

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


class RefusedLogins(logging.Handler):
    """Counts the refused logins that iamdb retried with a fresh credential."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "login refused" in record.getMessage():
            self.count += 1


# -- one engine -----------------------------------------------------------------------


def run_engine(engine: str, *, seconds: float, threads: int, interval: float, publish_delay: float) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="iamdb-demo-"))
    try:
        with database(engine) as db:
            secret_file = workdir / "db-password"
            secret_file.write_text(db.password)
            os.environ.update(
                IAMDB_DEMO_SECRET_FILE=str(secret_file),
                IAMDB_DEMO_ENGINE=engine,
                IAMDB_DEMO_HOST=db.host,
                IAMDB_DEMO_PORT=str(db.port),
                IAMDB_DEMO_NAME=db.name,
                IAMDB_DEMO_USER=db.user,
                DJANGO_SETTINGS_MODULE="examples.demo.settings",
            )
            return exercise(
                engine, db, seconds=seconds, threads=threads, interval=interval, publish_delay=publish_delay
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def exercise(
    engine: str, db: Database, *, seconds: float, threads: int, interval: float, publish_delay: float
) -> int:
    import django
    from django.core.wsgi import get_wsgi_application

    from examples.demo import published

    app = get_wsgi_application()  # runs django.setup(): the settings read the secret once
    from django.conf import settings

    refused = RefusedLogins()
    iamdb_logger = logging.getLogger("iamdb")
    iamdb_logger.addHandler(refused)
    iamdb_logger.setLevel(logging.INFO)
    iamdb_logger.propagate = False  # counted, not printed

    print(f"\n== {db.label} ({db.host}:{db.port}), user {db.user} ==")
    rotator = Rotator(db, published.publish, publish_delay)
    with serve(app) as url:
        print(
            f"  Django {django.get_version()} serving {url} (threaded WSGI server); "
            f"{threads} client threads; a new database connection per request"
        )
        for alias in ("default", "stock"):
            error = request(f"{url}?db={alias}", db.user)
            if error is not None:
                print(f"  the app does not work before any rotation ({alias}): {error}")
                return 1

        # 1. Django's own backend, password read at startup, across one rotation.
        stock = settings.DATABASES["stock"]["ENGINE"]
        before = load(f"{url}?db=stock", db.user, threads=threads, seconds=1.5)
        rotator.rotate()
        after = load(f"{url}?db=stock", db.user, threads=threads, seconds=2.0)
        print(f"  stock Django ({stock}, PASSWORD read once at startup), 1 rotation:")
        print(
            f"    before it: {before.ok} ok, {before.failed} failed; after it: {after.ok} ok, "
            f"{after.failed} failed"
        )
        if after.failed:
            print(f"    {after.first_error()}")

        # 2. iamdb's backend through rotations every `interval` seconds.
        source = settings.DATABASES["default"]["PASSWORD"]
        calls_before = published.calls()
        rotations_before = rotator.rotations
        rotator.start(interval)
        tally = load(url, db.user, threads=threads, seconds=seconds)
        rotator.stop()
        fetches = published.calls() - calls_before
        rotations = rotator.rotations - rotations_before

    requests_total = tally.ok + tally.failed
    print(f"  iamdb ({settings.DATABASES['default']['ENGINE']}, PASSWORD={source!r}), {seconds:g} s:")
    print(f"    requests            {tally.ok} ok, {tally.failed} failed")
    print(f"    rotations           {rotations} (server first, secret published {publish_delay:g} s later)")
    print(
        f"    credential fetches  {fetches} calls to the callable, for {requests_total} new connections"
        " (one per request)"
    )
    print(f"    refused logins      {refused.count}, each retried with a fresh credential")
    for error, count in tally.errors.most_common(3):
        print(f"    failed x{count}: {error}")
    verdict = "PASS" if tally.failed == 0 and tally.ok > 0 else "FAIL"
    print(
        f"  {verdict}: {engine}: {tally.ok} ok, {tally.failed} failed through {rotations} rotations;"
        f" stock Django failed {after.failed} of {after.ok + after.failed} after one"
    )
    return 0 if verdict == "PASS" else 1


# -- both engines ---------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="iamdb demo: requests through password rotations")
    parser.add_argument("--engine", choices=[*ENGINES, "both"], default="both")
    parser.add_argument("--seconds", type=float, default=20.0, help="load through iamdb, per engine")
    parser.add_argument("--threads", type=int, default=6, help="client threads")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between rotations")
    parser.add_argument(
        "--publish-delay",
        type=float,
        default=0.5,
        help="seconds between the server's change and the secret's publication",
    )
    args = parser.parse_args(argv)
    options = {
        "seconds": args.seconds,
        "threads": args.threads,
        "interval": args.interval,
        "publish_delay": args.publish_delay,
    }
    if args.engine != "both":
        return run_engine(args.engine, **options)

    # One process per engine: Django's settings are configured once per process.
    failed = []
    for engine in ENGINES:
        cmd = [
            sys.executable,
            __file__,
            "--engine",
            engine,
            "--seconds",
            str(args.seconds),
            "--threads",
            str(args.threads),
            "--interval",
            str(args.interval),
            "--publish-delay",
            str(args.publish_delay),
        ]
        if subprocess.run(cmd, check=False).returncode:
            failed.append(engine)
    print(f"\ndemo: {'FAILED on ' + ', '.join(failed) if failed else 'no failed request through iamdb'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
