"""What the AWS sources cost per new connection, and how many AWS calls they make.

Run by hand: ``python benchmarks/bench_aws.py``. It needs no server: tokens are
signed offline, and Secrets Manager calls go to moto's server started here.

1. Credential work per new connection (median of ``get_connection_params()``):
   Django's stock backend with a static password, iamdb with a cached IAM token,
   and the cost of signing a new token (what every connect would pay without
   the cache).
2. GetSecretValue calls per hour at a steady load of new connections, with and
   without rotation, on a simulated clock (the engine's injectable clock): one
   hour of requests in a second or two.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
import timeit
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import django
from django.conf import settings

if not settings.configured:
    settings.configure(DATABASES={}, INSTALLED_APPS=[], USE_TZ=True)
    django.setup()

import boto3
import botocore.client

from iamdb import Target
from iamdb.sources import RdsIamToken, SecretsManagerSecret, _aws
from tests.conftest import make_wrapper
from tests.fakeclock import FakeClock, run_now
from tests.services.moto import MotoServer

#: The RDS IAM hot path (a cached token) against stock Django, same settings.
PARAMS_RATIO_TARGET = 1.5


def median_us(func: Any, n: int = 2000) -> float:
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        func()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1e6


def interleaved_us(funcs: dict[str, Any], rounds: int = 40, batch: int = 2000) -> dict[str, float]:
    """Median over ``rounds`` of each function's mean time per call in a batch, the
    functions taking turns, so that a noisy moment hits them all alike."""
    samples: dict[str, list[float]] = {name: [] for name in funcs}
    for _ in range(rounds):
        for name, func in funcs.items():
            samples[name].append(timeit.timeit(func, number=batch) / batch * 1e6)
    return {name: statistics.median(values) for name, values in samples.items()}


def connection_params() -> None:
    session = boto3.session.Session(
        aws_access_key_id="AKIDTEST", aws_secret_access_key="s", region_name="us-east-1"
    )
    base = {"HOST": "mydb.c9akciq32.us-east-1.rds.amazonaws.com", "PORT": 5432, "NAME": "app", "USER": "app"}
    options = {"sslmode": "verify-full", "sslrootcert": "/rds-ca.pem"}
    stock = make_wrapper(
        {**base, "ENGINE": "django.db.backends.postgresql", "PASSWORD": "static", "OPTIONS": options}
    )
    source = RdsIamToken(session=session)
    iam = make_wrapper(
        {**base, "ENGINE": "iamdb.backends.postgresql", "PASSWORD": source, "OPTIONS": options}
    )
    iam.get_connection_params()  # first token
    target = iam.iamdb.target
    client = _aws.client("rds", "us-east-1", session)

    def sign() -> None:
        with _aws.redacted_logging():
            client.generate_db_auth_token(DBHostname=target.host, Port=5432, DBUsername="app")

    measured = interleaved_us({"stock": stock.get_connection_params, "iam": iam.get_connection_params})
    ratio = measured["iam"] / measured["stock"]
    rows = [
        ("Django stock backend, static password", measured["stock"]),
        ("iamdb, RdsIamToken, cached token", measured["iam"]),
        ("signing a new token (no cache)", median_us(sign, 500)),
    ]
    print("Credential work per new connection (get_connection_params(), same settings)")
    for name, value in rows:
        print(f"  {name:<42} {value:9.2f} us")
    verdict = "PASS" if ratio <= PARAMS_RATIO_TARGET else "MISS"
    label = "ratio cached token / stock"
    print(f"  {label:<42} {ratio:9.2f}     target <= {PARAMS_RATIO_TARGET} {verdict}")
    print(f"  tokens signed by the cached source: {source._cache.fetches}")


def get_secret_value_per_hour(moto: MotoServer) -> None:
    admin = moto.admin_client()
    name = f"iamdb/bench/{os.getpid()}"
    admin.create_secret(Name=name, SecretString=json.dumps({"username": "app", "password": "p0"}))
    print("\nGetSecretValue calls in one simulated hour, 10 new connections per second (36,000)")
    print("  (Django's stock backend with a static password: 0 calls)")
    real_call = botocore.client.BaseClient._make_api_call
    try:
        for label, rotate_every in (("no rotation", None), ("rotation every 10 minutes", 600.0)):
            # The engine's waits between re-fetches after refusals advance the simulated clock.
            clock = FakeClock(now=0.0)
            source = SecretsManagerSecret(name, ttl=300, clock=clock)
            source._cache._spawn = run_now  # background refreshes at once, on the simulated clock
            calls = [0]

            def counted(client: Any, operation: str, params: Any, calls: list[int] = calls) -> Any:
                if operation == "GetSecretValue" and hasattr(client, "_iamdb_session"):
                    calls[0] += 1
                return real_call(client, operation, params)

            botocore.client.BaseClient._make_api_call = counted  # type: ignore[method-assign]
            server_password = "p0"
            next_rotation = rotate_every or float("inf")
            version = 0
            publish_at = float("inf")
            target = Target(user="app")
            refused = 0
            try:
                for i in range(36_000):
                    if clock.monotonic() < i / 10:
                        clock.advance(i / 10 - clock.monotonic())
                    now = clock.monotonic()
                    if now >= next_rotation:  # the server first, the secret a second later
                        version += 1
                        server_password = f"p{version}"
                        next_rotation += rotate_every or 0
                        publish_at = now + 1.0
                    if now >= publish_at:
                        admin.put_secret_value(
                            SecretId=name,
                            SecretString=json.dumps({"username": "app", "password": server_password}),
                        )
                        publish_at = float("inf")
                    # A refused login invalidates; the backend's retry is the next request.
                    password = source.get_password(target)
                    if password != server_password:
                        refused += 1
                        source.invalidate(target, password=password)
            finally:
                botocore.client.BaseClient._make_api_call = real_call  # type: ignore[method-assign]
            print(f"  {label:<28} ttl=300 s: {calls[0]:5d} calls, {refused} refused logins")
    finally:
        admin.delete_secret(SecretId=name, ForceDeleteWithoutRecovery=True)


def main() -> None:
    print(f"Python {sys.version.split()[0]}, Django {django.get_version()}, boto3 {boto3.__version__}\n")
    connection_params()
    moto = MotoServer().start()
    os.environ.update(moto.environ())
    try:
        get_secret_value_per_hour(moto)
    finally:
        moto.stop()


if __name__ == "__main__":
    main()
