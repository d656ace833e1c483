"""``get_connection_params()`` with a warm cache, for every source, against stock Django.

Run from the repository root with a bootstrapped virtualenv:

    .venvs/dj52/bin/python benchmarks/bench_sources.py

Each source serves a real credential first (a callable; an RDS IAM token signed
offline; a secret read from moto's server; a Vault lease from OpenBao's database
engine on a private PostgreSQL server), then ``get_connection_params()`` is timed
in interleaved batches beside Django's stock backend with a static password and
the same settings. Target: within 1.5x of stock for every source (issue 7). A
report, not a test: exit status 0 either way.
"""

from __future__ import annotations

import os
import secrets
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import django  # noqa: E402
from django.conf import settings  # noqa: E402

if not settings.configured:
    settings.configure(DATABASES={}, INSTALLED_APPS=[], USE_TZ=True)
    django.setup()

from tests.conftest import make_wrapper  # noqa: E402
from tests.services.moto import MotoServer  # noqa: E402
from tests.services.openbao import PG_CREATION, PG_REVOCATION, OpenBao, bao_binary  # noqa: E402
from tests.services.postgres import PrivatePostgres  # noqa: E402

RATIO_TARGET = 1.5


def batch_us(func: Callable[[], object], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        func()
    return (time.perf_counter() - start) / calls * 1e6


def interleaved(funcs: dict[str, Callable[[], object]], rounds: int, calls: int) -> dict[str, float]:
    """Median over rounds of each function's mean per call, taking turns."""
    samples: dict[str, list[float]] = {name: [] for name in funcs}
    for _ in range(rounds):
        for name, func in funcs.items():
            samples[name].append(batch_us(func, calls))
    return {name: statistics.median(values) for name, values in samples.items()}


@contextmanager
def environ(**values: str) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def sources(stack: ExitStack, pg: PrivatePostgres, user: str, password: str) -> dict[str, Any]:
    from iamdb.sources import CallableSource, RdsIamToken, SecretsManagerSecret, VaultDatabaseCredentials
    from iamdb.sources.vault import TokenAuth

    found: dict[str, Any] = {"CallableSource(ttl=3600)": CallableSource(lambda: password, ttl=3600)}
    found["RdsIamToken"] = RdsIamToken(region="eu-west-1")

    moto = MotoServer().start()
    stack.callback(moto.stop)
    stack.enter_context(environ(**moto.environ()))
    import boto3

    name = f"iamdb-bench-{secrets.token_hex(4)}"
    boto3.client("secretsmanager", region_name="eu-west-1").create_secret(
        Name=name, SecretString=f'{{"username": "{user}", "password": "{password}"}}'
    )
    found["SecretsManagerSecret"] = SecretsManagerSecret(name, region="eu-west-1")

    binary = bao_binary()
    if binary is None:
        print("  (OpenBao not installed: no Vault figure)")
        return found
    bao = OpenBao(binary).start()
    stack.callback(bao.stop)
    pg.sql("CREATE ROLE iamdb_app_owner NOLOGIN")
    bao.configure_postgres("pg", pg.port)
    bao.dynamic_role("bench", "pg", PG_CREATION, PG_REVOCATION, ttl=3600, max_ttl=7200)
    found["VaultDatabaseCredentials"] = VaultDatabaseCredentials(
        "bench", url=bao.addr, auth=TokenAuth(bao.root_token)
    )
    return found


def main() -> int:
    rounds, calls = 30, 2000
    print(f"get_connection_params() with a warm cache, per source (Django {django.get_version()})")
    with ExitStack() as stack:
        pg = PrivatePostgres().start()
        stack.callback(pg.stop)
        user, password = f"iamdb_bench_{secrets.token_hex(4)}", secrets.token_urlsafe(18)
        pg.create_role(user, password)
        base = {
            "HOST": "127.0.0.1",
            "PORT": pg.port,
            "NAME": "postgres",
            "USER": user,
            "OPTIONS": {"sslmode": "verify-full", "sslrootcert": "/dev/null"},
        }
        stock = make_wrapper({"ENGINE": "django.db.backends.postgresql", **base, "PASSWORD": password})
        rows = []
        for label, source in sources(stack, pg, user, password).items():
            wrapper = make_wrapper({"ENGINE": "iamdb.backends.postgresql", **base, "PASSWORD": source})
            params = wrapper.get_connection_params()  # the one real fetch: the cache is warm from here
            assert params["password"], label
            fetches = source._cache.fetches
            figures = interleaved(
                {"stock": stock.get_connection_params, "iamdb": wrapper.get_connection_params}, rounds, calls
            )
            assert source._cache.fetches == fetches, f"{label} fetched while being measured"
            rows.append((label, figures["stock"], figures["iamdb"]))
    print(f"  {'source':28} {'stock':>9} {'iamdb':>9} {'ratio':>7}  target <= {RATIO_TARGET}")
    for label, stock_us, iamdb_us in rows:
        ratio = iamdb_us / stock_us
        verdict = "PASS" if ratio <= RATIO_TARGET else "MISS"
        print(f"  {label:28} {stock_us:7.2f}us {iamdb_us:7.2f}us {ratio:7.2f}  {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
