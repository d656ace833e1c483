"""iamdb beside Django's stock backend and the other packages, in one run, on the same servers.

Run by ``scripts/bench --compare`` (it builds ``.venvs/bench-others``: Django 5.2, the
drivers, boto3, moto, matplotlib, and django-mysql-rds and django-iam-dbauth from PyPI),
or by hand, as root, from the repository root:

    .venvs/bench-others/bin/python benchmarks/bench_compare.py [--quick] [--no-fleet]

The servers are the RDS-IAM emulator's (``tests/services/iam_emulator.py``): a private
PostgreSQL and a private MariaDB, both with TLS, whose IAM users log in through PAM with a
checker that recomputes every token's SigV4 signature. Every package signs its tokens with
boto3 against the emulator's key pair, given to boto3 through its own environment variables
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``).

Signings are counted the same way for every package: botocore's
``generate_db_auth_token`` (which boto3 attaches to every RDS client class it builds) is
replaced by a counting wrapper before any RDS client exists.

Per engine and package:

1. credential work per new connection: median ``get_connection_params()``, and the tokens
   signed per call;
2. a whole new connection (connect + close), against stock Django in ABBA order; the ratio
   is 1 + median paired difference / stock median. Stock Django logs in as the same IAM
   user with a static password that is a token signed beforehand, so both sides pay the same
   login on the server (the PAM check), and the ratio shows what the package adds;
3. tokens signed for 64 threads opening their first connection at once;
4. requests failed (new connection + ``SELECT 1`` + close, from several threads) while the
   emulator refuses tokens older than 3 s (token expiry), and while a password user's
   password is rotated every second on the server and published to a store 0.15 s later
   (rotation; the IAM-only package has nothing to rotate).

Then the fleet benchmark (``bench_fleet.py``), unless ``--no-fleet``. The tables are printed,
and ``benchmarks/out/compare.json`` and the chart ``benchmarks/out/compare.png`` written.
A report, not a test: exit status 0 whatever it measured (non-zero only if it cannot run).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib.metadata
import json
import os
import platform
import secrets
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
OUT = REPO / "benchmarks" / "out"

# -- counting token signings, the same way for every package ----------------------------
# Before boto3 builds any RDS client class: the class gets botocore.signers'
# generate_db_auth_token when it is created (the 'creating-client-class.rds' handler).
import botocore.signers  # noqa: E402

_signed = 0
_signed_lock = threading.Lock()
_real_generate = botocore.signers.generate_db_auth_token


@functools.wraps(_real_generate)
def _counted_generate(*args: Any, **kwargs: Any) -> Any:
    global _signed
    with _signed_lock:
        _signed += 1
    return _real_generate(*args, **kwargs)


botocore.signers.generate_db_auth_token = _counted_generate


def signings() -> int:
    with _signed_lock:
        return _signed


import django  # noqa: E402
from django.conf import settings  # noqa: E402

if not settings.configured:
    settings.configure(DATABASES={}, INSTALLED_APPS=[], USE_TZ=True)
    django.setup()

from tests import load  # noqa: E402
from tests.services.iam_emulator import IamEmulator  # noqa: E402
from tests.services.mariadb import PrivateMariadb  # noqa: E402
from tests.services.tls import TestCA  # noqa: E402

THREADS = 64
CONNECT_RATIO_TARGET = 1.03
FETCH_TARGET = 1
PACKAGES = ("stock", "django-mysql-rds", "django-iam-dbauth", "iamdb")
LABELS = {
    "stock": "Django stock, static password",
    "django-mysql-rds": "django-mysql-rds (callable)",
    "django-iam-dbauth": "django-iam-dbauth",
    "iamdb": "iamdb",
}


def versions() -> dict[str, str]:
    import boto3

    found = {"Python": platform.python_version(), "Django": django.get_version(), "boto3": boto3.__version__}
    for dist in ("django-mysql-rds", "django-iam-dbauth", "mysqlclient", "psycopg"):
        found[dist] = importlib.metadata.version(dist)
    from iamdb import __version__

    found["iamdb"] = f"{__version__} (this checkout)"
    return found


# -- servers ------------------------------------------------------------------------------


@dataclasses.dataclass
class Engine:
    vendor: str  # "postgresql" | "mysql"
    server: Any
    iam_user: str
    pw_user: str
    pw: str
    ca: str

    @property
    def tls(self) -> dict[str, Any]:
        if self.vendor == "postgresql":
            return {"sslmode": "verify-full", "sslrootcert": self.ca}
        return {"ssl": {"ca": self.ca}, "ssl_mode": "VERIFY_IDENTITY"}

    def base(self, user: str) -> dict[str, Any]:
        return {
            "HOST": "127.0.0.1",
            "PORT": self.server.port,
            "NAME": "postgres" if self.vendor == "postgresql" else "test",
            "USER": user,
        }

    def set_password(self, password: str) -> None:
        self.server.set_password(self.pw_user, password)


def start_servers(stack: ExitStack) -> tuple[IamEmulator, list[Engine]]:
    folder = Path(tempfile.mkdtemp(prefix="iamdb-bench-tls-"))
    stack.callback(shutil.rmtree, folder, ignore_errors=True)
    folder.chmod(0o755)
    ca = TestCA(folder)
    emulator = IamEmulator().install()
    stack.callback(emulator.remove)

    # PostgreSQL as the fixture iam_postgres makes it: TLS, PAM for members of rds_iam.
    pg = emulator.postgres(ca)
    stack.callback(pg.stop)
    pg_iam = f"iam_{secrets.token_hex(4)}"
    pg.sql(f"CREATE ROLE {pg_iam} LOGIN IN ROLE rds_iam")
    pg_pw_user, pg_pw = f"pw_{secrets.token_hex(4)}", secrets.token_urlsafe(18)
    pg.create_role(pg_pw_user, pg_pw)

    maria = PrivateMariadb(tls=ca).start()
    stack.callback(maria.stop)
    emulator.accept_endpoint("127.0.0.1", maria.port)
    my_iam = f"iam_{secrets.token_hex(4)}"
    maria.create_iam_user(my_iam, emulator.service)
    my_pw_user, my_pw = f"pw_{secrets.token_hex(4)}", secrets.token_urlsafe(18)
    maria.create_user(my_pw_user, my_pw)

    os.environ.update(
        AWS_ACCESS_KEY_ID=emulator.access_key,
        AWS_SECRET_ACCESS_KEY=emulator.secret_key,
        AWS_DEFAULT_REGION=emulator.region,
    )
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        os.environ.pop(key, None)
    os.environ["AWS_CONFIG_FILE"] = os.environ["AWS_SHARED_CREDENTIALS_FILE"] = "/nonexistent"
    return emulator, [
        Engine("mysql", maria, my_iam, my_pw_user, my_pw, str(ca.ca)),
        Engine("postgresql", pg, pg_iam, pg_pw_user, pg_pw, str(ca.ca)),
    ]


# -- the packages' settings -----------------------------------------------------------------

_harness_client: Any = None


def static_token(engine: Engine) -> str:
    """A token signed now by the harness, for stock Django's static password."""
    global _harness_client
    import boto3

    if _harness_client is None:
        _harness_client = boto3.session.Session().client("rds", region_name="us-east-1")
    token: str = _harness_client.generate_db_auth_token(
        DBHostname="127.0.0.1", Port=engine.server.port, DBUsername=engine.iam_user
    )
    return token


def mysql_rds_password(engine: Engine) -> Callable[[], str]:
    """django-mysql-rds's way: a callable PASSWORD that signs a token (with one boto3 client
    made at first use and reused: its best case)."""
    client: list[Any] = []

    def rds_token() -> str:
        import boto3

        if not client:
            client.append(boto3.client("rds", region_name="us-east-1"))
        token: str = client[0].generate_db_auth_token(
            DBHostname="127.0.0.1", Port=engine.server.port, DBUsername=engine.iam_user
        )
        return token

    return rds_token


def iam_settings(package: str, engine: Engine, *, static: str | None = None) -> dict[str, Any] | None:
    """Settings for ``package`` logging in as the engine's IAM user, or None where it has none."""
    base = engine.base(engine.iam_user)
    if package == "stock":
        assert static is not None
        return {
            **base,
            "ENGINE": f"django.db.backends.{engine.vendor}",
            "PASSWORD": static,
            "OPTIONS": engine.tls,
        }
    if package == "django-mysql-rds":
        if engine.vendor != "mysql":
            return None
        return {
            **base,
            "ENGINE": "mysql_rds.backend",
            "PASSWORD": mysql_rds_password(engine),
            "OPTIONS": engine.tls,
        }
    if package == "django-iam-dbauth":
        options = {
            **engine.tls,
            "use_iam_auth": True,
            "region_name": "us-east-1",
            "resolve_cname_enabled": False,
        }
        return {
            **base,
            "ENGINE": f"django_iam_dbauth.aws.{engine.vendor}",
            "PASSWORD": "",
            "OPTIONS": options,
        }
    from iamdb.sources import RdsIamToken

    return {
        **base,
        "ENGINE": f"iamdb.backends.{engine.vendor}",
        "PASSWORD": RdsIamToken(),
        "OPTIONS": engine.tls,
    }


def make_wrapper(settings_dict: dict[str, Any], alias: str = "default") -> Any:
    from django.db import connections
    from django.db.utils import load_backend

    configured = connections.configure_settings({alias: dict(settings_dict)})[alias]
    return load_backend(configured["ENGINE"]).DatabaseWrapper(configured, alias)


# -- measurements ------------------------------------------------------------------------------


def credential_work(settings_dict: dict[str, Any], calls: int) -> tuple[float, float]:
    """Median get_connection_params() in µs, and tokens signed per call."""
    wrapper = make_wrapper(settings_dict)
    wrapper.get_connection_params()  # imports, first token
    before = signings()
    samples = []
    for _ in range(calls):
        start = time.perf_counter_ns()
        wrapper.get_connection_params()
        samples.append(time.perf_counter_ns() - start)
    return statistics.median(samples) / 1000, (signings() - before) / calls


def connect_ratio(stock: dict[str, Any], other: dict[str, Any], pairs: int) -> tuple[float, float, float]:
    """(stock median ms, package median ms, paired ratio), ABBA order."""
    a, b = make_wrapper(stock), make_wrapper(other)

    def one(wrapper: Any) -> int:
        start = time.perf_counter_ns()
        wrapper.connect()
        wrapper.close()
        return time.perf_counter_ns() - start

    for _ in range(3):
        one(a)
        one(b)
    sa: list[int] = []
    sb: list[int] = []
    for i in range(pairs):
        if i % 2:
            sa.append(one(a))
            sb.append(one(b))
        else:
            sb.append(one(b))
            sa.append(one(a))
    diff = statistics.median([y - x for x, y in zip(sa, sb, strict=True)])
    stock_med = statistics.median(sa)
    return stock_med / 1e6, statistics.median(sb) / 1e6, 1 + diff / stock_med


def first_connections(settings_dict: dict[str, Any]) -> tuple[int, int, float]:
    """64 threads, a wrapper each, released at once: (tokens signed, connected, seconds)."""
    start_line = threading.Barrier(THREADS + 1)
    all_open = threading.Barrier(THREADS + 1)
    worked = [False] * THREADS
    errors: list[str] = []

    def first(index: int) -> None:
        wrapper = make_wrapper(settings_dict)  # in its thread, as Django makes one per thread
        try:
            start_line.wait()
            with wrapper.cursor() as cursor:
                cursor.execute("SELECT 1")
                worked[index] = cursor.fetchone()[0] == 1
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:160])
        finally:
            all_open.wait()
            wrapper.close()

    threads = [threading.Thread(target=first, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    before = signings()
    start_line.wait()
    started = time.perf_counter()
    all_open.wait()
    elapsed = time.perf_counter() - started
    for thread in threads:
        thread.join()
    for error in sorted(set(errors))[:2]:
        print(f"      error: {error}")
    return signings() - before, sum(worked), elapsed


def run_load(request: Callable[[], None], threads: int, seconds: float) -> tuple[int, int, list[str]]:
    """``request`` from ``threads`` threads for ``seconds``: (ok, failed, first errors)."""
    ok, failures = load.run_load(request, threads=threads, seconds=seconds, max_requests=10**9)
    return ok, len(failures), [load.first_line(exc) for exc in failures[:3]]


def requester(settings_dict: dict[str, Any]) -> Callable[[], None]:
    """One request as Django makes it with CONN_MAX_AGE=0: connect, SELECT 1, close
    (a wrapper per thread, as Django has one per thread and alias)."""
    local = threading.local()

    def request() -> None:
        wrapper = getattr(local, "wrapper", None)
        if wrapper is None:
            wrapper = local.wrapper = make_wrapper(settings_dict)
        try:
            with wrapper.cursor() as cursor:
                cursor.execute("SELECT 1")
                if cursor.fetchone()[0] != 1:
                    raise AssertionError("SELECT 1 did not return 1")
        finally:
            wrapper.close()

    return request


@contextmanager
def token_max_age(emulator: IamEmulator, seconds: float) -> Iterator[None]:
    emulator.set_max_age(seconds)
    try:
        yield
    finally:
        emulator.set_max_age(900)


class Rotator:
    """Changes the password on the server every ``every`` s, then publishes it ``delay`` s
    later, as a secret store does (for a moment the published password is already wrong)."""

    def __init__(self, engine: Engine, every: float = 1.0, delay: float = 0.15) -> None:
        self.engine, self.every, self.delay = engine, every, delay
        self.published = engine.pw
        self.reads = 0
        self.rotations = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def read(self) -> str:
        self.reads += 1
        return self.published

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            password = secrets.token_urlsafe(18)
            self.engine.set_password(password)
            time.sleep(self.delay)
            self.published = password
            self.rotations += 1

    def __enter__(self) -> Rotator:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        self.engine.set_password(self.published)
        self.engine.pw = self.published


def rotation_settings(package: str, engine: Engine, rotator: Rotator) -> dict[str, Any] | None:
    base = {**engine.base(engine.pw_user), "OPTIONS": {}}
    if package == "stock":
        return {**base, "ENGINE": f"django.db.backends.{engine.vendor}", "PASSWORD": rotator.published}
    if package == "django-mysql-rds":
        if engine.vendor != "mysql":
            return None
        return {**base, "ENGINE": "mysql_rds.backend", "PASSWORD": rotator.read}
    if package == "django-iam-dbauth":
        return None  # IAM tokens only: no password to rotate
    from iamdb.sources import CallableSource

    return {
        **base,
        "ENGINE": f"iamdb.backends.{engine.vendor}",
        "PASSWORD": CallableSource(rotator.read, ttl=3600),
    }


# -- the run ---------------------------------------------------------------------------------------


@dataclasses.dataclass
class Row:
    engine: str
    package: str
    work_us: float | None = None
    signed_per_conn: float | None = None
    stock_ms: float | None = None
    conn_ms: float | None = None
    ratio: float | None = None
    fetches_64: int | None = None
    connected_64: int | None = None
    expiry_ok: int | None = None
    expiry_failed: int | None = None
    expiry_signed: int | None = None
    rotation_ok: int | None = None
    rotation_failed: int | None = None
    rotation_reads: int | None = None


def run_engine(engine: Engine, emulator: IamEmulator, quick: bool) -> list[Row]:
    print(
        f"\n== {engine.vendor}: private {'PostgreSQL' if engine.vendor == 'postgresql' else 'MariaDB'}, "
        f"TLS, IAM user {engine.iam_user} (PAM + SigV4 checker) =="
    )
    rows = []
    pairs = {"stock": 0, "django-mysql-rds": 60, "django-iam-dbauth": 20, "iamdb": 150}
    for package in PACKAGES:
        if iam_settings(package, engine, static="x") is None:
            continue
        row = Row(engine.vendor, package)
        rows.append(row)
        print(f"  {LABELS[package]}")
        settings_dict = iam_settings(package, engine, static=static_token(engine))
        assert settings_dict is not None
        calls = 10 if package == "django-iam-dbauth" else 300
        row.work_us, row.signed_per_conn = credential_work(
            settings_dict, calls if not quick else max(calls // 5, 5)
        )
        print(
            f"    credential work: get_connection_params() {row.work_us:10.1f} us, "
            f"{row.signed_per_conn:.2f} token(s) signed per call"
        )
        if package != "stock":
            n = pairs[package] // (3 if quick else 1)
            stock = iam_settings("stock", engine, static=static_token(engine))
            assert stock is not None
            row.stock_ms, row.conn_ms, row.ratio = connect_ratio(stock, settings_dict, n)
            print(
                f"    new connection: stock {row.stock_ms:.2f} ms, this {row.conn_ms:.2f} ms, "
                f"ratio (paired, {n} pairs) {row.ratio:.3f}"
            )
        else:
            row.ratio = 1.0
        settings_dict = iam_settings(
            package, engine, static=static_token(engine)
        )  # a new source: no token yet
        assert settings_dict is not None
        row.fetches_64, row.connected_64, elapsed = first_connections(settings_dict)
        print(
            f"    {THREADS} simultaneous first connections: {row.fetches_64} token(s) signed, "
            f"{row.connected_64}/{THREADS} connected in {elapsed:.2f} s"
        )

        settings_dict = iam_settings(package, engine, static=static_token(engine))
        assert settings_dict is not None
        before = signings()
        with token_max_age(emulator, 3):
            row.expiry_ok, row.expiry_failed, errors = run_load(
                requester(settings_dict), 4, 5 if quick else 8
            )
        row.expiry_signed = signings() - before
        print(
            f"    tokens expire after 3 s, 4 threads for {5 if quick else 8} s: {row.expiry_failed} failed "
            f"of {row.expiry_ok + row.expiry_failed} requests, {row.expiry_signed} token(s) signed"
        )
        for error in errors[:1]:
            print(f"      e.g. {error}")

        with Rotator(engine) as rotator:
            rot = rotation_settings(package, engine, rotator)
            if rot is not None:
                row.rotation_ok, row.rotation_failed, errors = run_load(requester(rot), 6, 4 if quick else 6)
        if rot is None:
            print("    rotation: not applicable (IAM tokens only)")
        else:
            row.rotation_reads = rotator.reads
            print(
                f"    password rotated every 1 s ({rotator.rotations} rotations), 6 threads: "
                f"{row.rotation_failed} failed of {(row.rotation_ok or 0) + (row.rotation_failed or 0)} "
                "requests, "
                f"{rotator.reads} read(s) of the store"
            )
            for error in errors[:1]:
                print(f"      e.g. {error}")
    return rows


def fmt(value: Any, spec: str = "") -> str:
    return "-" if value is None else format(value, spec)


def print_table(rows: list[Row]) -> None:
    print("\n== side by side (same servers, same run) ==")
    head = (
        f"  {'engine':10} {'package':30} {'cred. work':>11} {'signed':>7} {'new conn':>9} "
        f"{'signed for':>10} {'failed':>13} {'failed':>13}"
    )
    print(head)
    print(
        f"  {'':10} {'':30} {'per conn':>11} {'per conn':>7} {'/ stock':>9} {'64 first':>10} "
        f"{'token expiry':>13} {'rotation':>13}"
    )
    for r in rows:
        expiry = f"{r.expiry_failed}/{(r.expiry_ok or 0) + (r.expiry_failed or 0)}"
        rotation = (
            "-"
            if r.rotation_failed is None
            else f"{r.rotation_failed}/{(r.rotation_ok or 0) + r.rotation_failed}"
        )
        print(
            f"  {r.engine:10} {LABELS[r.package]:30} {fmt(r.work_us, '9.1f')}us "
            f"{fmt(r.signed_per_conn, '7.2f')} "
            f"{fmt(r.ratio, '9.3f')} {fmt(r.fetches_64, '10d')} {expiry:>13} {rotation:>13}"
        )
    print("\n  iamdb against its targets:")
    for r in rows:
        if r.package != "iamdb":
            continue
        checks = [
            (
                f"new connection / stock <= {CONNECT_RATIO_TARGET}",
                f"{r.ratio:.3f}",
                (r.ratio or 9) <= CONNECT_RATIO_TARGET,
            ),
            (
                f"tokens signed for {THREADS} first connections = {FETCH_TARGET}",
                f"{r.fetches_64}",
                r.fetches_64 == FETCH_TARGET and r.connected_64 == THREADS,
            ),
            ("failed through token expiry = 0", f"{r.expiry_failed}", r.expiry_failed == 0),
            ("failed through rotation = 0", f"{r.rotation_failed}", r.rotation_failed == 0),
        ]
        for name, measured, ok in checks:
            print(f"    {'PASS' if ok else 'MISS'}  {r.engine:10} {name:45} {measured}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations")
    parser.add_argument("--no-fleet", action="store_true", help="skip the fleet benchmark (bench_fleet.py)")
    parser.add_argument("--out", type=Path, default=OUT, help=f"output folder (default {OUT})")
    parser.add_argument("--chart-only", action="store_true", help="draw the chart again from compare.json")
    args = parser.parse_args(argv)
    if args.chart_only:
        print(
            f"chart:   {draw(json.loads((args.out / 'compare.json').read_text()), args.out / 'compare.png')}"
        )
        return 0
    if os.geteuid() != 0:
        print("bench_compare: needs root (the RDS-IAM emulator writes a PAM service; private servers)")
        return 2
    found = versions()
    print("iamdb beside the other packages, " + time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    print("  " + ", ".join(f"{k} {v}" for k, v in found.items()))
    started = time.perf_counter()
    rows: list[Row] = []
    with ExitStack() as stack:
        emulator, engines = start_servers(stack)
        for engine in engines:
            rows += run_engine(engine, emulator, args.quick)
    print_table(rows)
    fleet: dict[str, Any] | None = None
    if not args.no_fleet:
        from benchmarks import bench_fleet

        fleet = bench_fleet.run(quick=args.quick)
    args.out.mkdir(parents=True, exist_ok=True)
    results = {
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "versions": found,
        "compare": [dataclasses.asdict(r) for r in rows],
        "fleet": fleet,
    }
    (args.out / "compare.json").write_text(json.dumps(results, indent=1))
    chart = draw(results, args.out / "compare.png")
    print(f"\nresults: {args.out / 'compare.json'}")
    print(f"chart:   {chart}")
    print(f"({time.perf_counter() - started:.0f} s)")
    return 0


def draw(results: dict[str, Any], path: Path) -> Path:
    # matplotlib is in .venvs/bench-others only
    import matplotlib  # type: ignore[import-not-found, unused-ignore]

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # type: ignore[import-not-found, unused-ignore]

    rows = [r for r in results["compare"]]
    fleet = results.get("fleet")
    fig, grid = plt.subplots(2, 2, figsize=(14, 10.5))
    axes = list(grid.flat)
    colors = {
        "stock": "#888888",
        "django-mysql-rds": "#d98c3a",
        "django-iam-dbauth": "#c0504d",
        "iamdb": "#2e75b6",
    }
    names = [
        f"{LABELS[r['package']].split(' (')[0].replace('Django stock, static password', 'stock')}"
        f"\n{r['engine']}"
        for r in rows
    ]
    xs = range(len(rows))
    bar_colors = [colors[r["package"]] for r in rows]

    ax = axes[0]
    ratios = [r["ratio"] for r in rows]
    ax.bar(xs, ratios, color=bar_colors)
    ax.axhline(CONNECT_RATIO_TARGET, color="black", linestyle="--", linewidth=1)
    ax.set_title(
        "whole new connection (connect + close), time / stock Django\n(dashed: iamdb's target, 1.03)"
    )
    for x, v in zip(xs, ratios, strict=True):
        ax.text(x, v + 0.03, f"{v:.2f}", ha="center", va="bottom", fontsize=9)

    ax = axes[1]
    fetches = [r["fetches_64"] for r in rows]
    ax.bar(xs, fetches, color=bar_colors)
    ax.set_title(f"tokens signed for {THREADS} simultaneous\nfirst connections")
    for x, v in zip(xs, fetches, strict=True):
        ax.text(x, v + 0.5, str(v), ha="center", va="bottom", fontsize=9)

    ax = axes[2]
    width = 0.4
    expiry = [100 * r["expiry_failed"] / max(r["expiry_ok"] + r["expiry_failed"], 1) for r in rows]
    rotation = [
        0
        if r["rotation_failed"] is None
        else 100 * r["rotation_failed"] / max(r["rotation_ok"] + r["rotation_failed"], 1)
        for r in rows
    ]
    ax.bar([x - width / 2 for x in xs], expiry, width, color=bar_colors, label="token expiry (3 s)")
    ax.bar(
        [x + width / 2 for x in xs],
        rotation,
        width,
        color=bar_colors,
        hatch="//",
        alpha=0.6,
        label="password rotation (1 s)",
    )
    for x, r, e, ro in zip(xs, rows, expiry, rotation, strict=True):
        ax.text(x - width / 2, e + 1, f"{e:.0f}", ha="center", fontsize=7)
        ax.text(
            x + width / 2,
            ro + 1,
            "n/a" if r["rotation_failed"] is None else f"{ro:.0f}",
            ha="center",
            fontsize=7,
        )
    ax.set_ylim(0, 110)
    ax.set_title("requests failed, % (plain: tokens expire after 3 s;\nhatched: password rotated every 1 s)")
    for a in axes[:3]:
        a.set_xticks(list(xs))
        a.set_xticklabels(names, rotation=35, ha="right", fontsize=9)

    if fleet:
        ax = axes[3]
        items = fleet["rows"]
        labels = [i["label"] for i in items]
        per_host = [max(i["per_host_hour"], 0.5) for i in items]
        ax.barh(range(len(items)), per_host, color=[("#2e75b6" if i["iamdb"] else "#c0504d") for i in items])
        ax.set_xscale("log")
        ax.set_yticks(range(len(items)))
        ax.set_yticklabels([label.replace(" + ", "\n+ ") for label in labels], fontsize=9)
        ax.invert_yaxis()
        for y, i in enumerate(items):
            ax.text(
                max(i["per_host_hour"], 0.5) * 1.1, y, f"{i['per_host_hour']:,.0f}", va="center", fontsize=9
            )
        ax.set_xlim(1, max(i["per_host_hour"] for i in items) * 20)
        ax.set_title(
            f"upstream calls per hour per host\n"
            f"({fleet['processes']} processes x {fleet['threads']} threads; log scale)"
        )
    else:
        axes[3].axis("off")
    fig.suptitle(
        f"iamdb beside stock Django, django-mysql-rds and django-iam-dbauth: scripts/bench --compare, "
        f"{results['date']}, {results['machine']}",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    sys.exit(main())
