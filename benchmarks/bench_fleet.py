"""A fleet against one secret store: 4 processes x 16 threads, upstream calls per hour.

Run by ``scripts/bench --compare`` (after ``bench_compare.py``), or alone from the
repository root:

    .venvs/bench-others/bin/python benchmarks/bench_fleet.py [--quick]

One host (this machine) runs 4 worker processes of 16 threads each. Every thread
makes requests as Django does with CONN_MAX_AGE=0 (a new connection to the machine's
MariaDB, ``SELECT 1``, close; then 10 ms of think time), with its password from:

- ``SecretsManagerSecret`` (ttl 300 s): each process reads moto's Secrets Manager itself;
- ``SecretsManagerAgentSecret`` (ttl 60 s): each process asks one agent per host
  (``tests/services/smagent.py``, a stand-in of the AWS Secrets Manager Agent in front of
  moto, caching 300 s as the real one does);
- ``FileSecret``: one agent per host (here a thread of the harness, as Vault Agent would)
  reads the secret every 300 s and renders it into a file by atomic replace;
- for contrast, django-mysql-rds with a callable PASSWORD that calls GetSecretValue
  (the way to use Secrets Manager with it: one call per new connection).

Upstream calls are GetSecretValue calls that reach moto: counted in each process by
wrapping botocore's ``BaseClient._make_api_call``, and by the agent stand-ins themselves.

How the hour is measured: iamdb's sources run on a clock ``SCALE`` times faster than the
real one (their injectable clock), and the per-host agents' intervals are divided by
``SCALE`` too, so the ``SECONDS``-long window is ``SECONDS x SCALE`` = 3600 seconds of
cache time: the counts in the window are the calls of one hour (the first fetch of each
process included). django-mysql-rds calls once per request whatever the time, so its
hour is the window's count x 3600 / ``SECONDS``, at the request rate measured here.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests import load  # noqa: E402

PROCESSES = 4
THREADS = 16
THINK_S = 0.01
SECONDS = 30.0
SCALE = 120.0  # SECONDS x SCALE = one hour of cache time
SM_TTL = 300.0
AGENT_TTL = 300.0  # the AWS Secrets Manager Agent's default cache time
FILE_AGENT_EVERY = 300.0  # how often the per-host file agent reads the store


class ScaledClock:
    """A clock running ``factor`` times faster than the real one (iamdb.clock.Clock)."""

    def __init__(self, factor: float) -> None:
        self.factor = factor
        self.start_monotonic, self.start_wall = time.monotonic(), time.time()

    def monotonic(self) -> float:
        return self.start_monotonic + (time.monotonic() - self.start_monotonic) * self.factor

    def time(self) -> float:
        return self.start_wall + (time.time() - self.start_wall) * self.factor

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds / self.factor)


# -- a worker process -------------------------------------------------------------------


def child(config: dict[str, Any]) -> dict[str, Any]:
    import botocore.client
    import django
    from django.conf import settings

    settings.configure(DATABASES={}, INSTALLED_APPS=[], USE_TZ=True)
    django.setup()
    from django.db import connections
    from django.db.utils import load_backend

    calls = [0]
    lock = threading.Lock()
    real_call = botocore.client.BaseClient._make_api_call  # type: ignore[attr-defined, unused-ignore]

    def counted(client: Any, operation: str, params: Any) -> Any:
        if operation == "GetSecretValue":
            with lock:
                calls[0] += 1
        return real_call(client, operation, params)

    botocore.client.BaseClient._make_api_call = counted  # type: ignore[attr-defined, unused-ignore]

    scale = float(config["scale"])
    clock = ScaledClock(scale)
    kind = config["kind"]
    base = {"HOST": config["host"], "PORT": config["port"], "NAME": "test", "USER": config["user"]}
    # The retry budget runs on the source's clock: 5 real seconds.
    options = {"iamdb": {"retry_budget": 5 * scale, "max_retry_delay": scale}}
    source: Any = None
    if kind == "sm":
        from iamdb.sources import SecretsManagerSecret

        source = SecretsManagerSecret(config["secret"], ttl=SM_TTL, clock=clock)
        settings_dict = {**base, "ENGINE": "iamdb.backends.mysql", "PASSWORD": source, "OPTIONS": options}
    elif kind == "agent":
        from iamdb.sources import SecretsManagerAgentSecret

        source = SecretsManagerAgentSecret(config["secret"], endpoint=config["endpoint"], clock=clock)
        settings_dict = {**base, "ENGINE": "iamdb.backends.mysql", "PASSWORD": source, "OPTIONS": options}
    elif kind == "file":
        from iamdb.sources import FileSecret

        source = FileSecret(config["path"], clock=clock)
        settings_dict = {**base, "ENGINE": "iamdb.backends.mysql", "PASSWORD": source, "OPTIONS": options}
    else:  # django-mysql-rds with a callable that reads Secrets Manager
        import boto3

        client = boto3.client("secretsmanager")

        def password() -> str:
            value: str = json.loads(client.get_secret_value(SecretId=config["secret"])["SecretString"])[
                "password"
            ]
            return value

        settings_dict = {**base, "ENGINE": "mysql_rds.backend", "PASSWORD": password, "OPTIONS": {}}

    local = threading.local()

    def request() -> None:
        wrapper = getattr(local, "wrapper", None)
        if wrapper is None:
            configured = connections.configure_settings({"default": dict(settings_dict)})["default"]
            wrapper = local.wrapper = load_backend(configured["ENGINE"]).DatabaseWrapper(
                configured, "default"
            )
        try:
            with wrapper.cursor() as cursor:
                cursor.execute("SELECT 1")
                if cursor.fetchone()[0] != 1:
                    raise AssertionError("SELECT 1")
        finally:
            wrapper.close()

    # Every process starts at the same moment and runs for the same window.
    time.sleep(max(config["start_at"] - time.time(), 0))

    def paced() -> None:
        try:
            request()
        finally:
            time.sleep(THINK_S)

    ok, failures = load.run_load(
        paced, threads=config["threads"], seconds=config["seconds"], max_requests=10**9
    )
    return {
        "ok": ok,
        "failed": len(failures),
        "errors": [load.first_line(exc) for exc in failures[:2]],
        "get_secret_value": calls[0],
        "fetches": source._cache.fetches if source is not None else None,
    }


# -- the harness ----------------------------------------------------------------------------


def run_processes(
    kind: str, common: dict[str, Any], env: dict[str, str], seconds: float, start_at: float | None = None
) -> list[dict[str, Any]]:
    start_at = start_at or time.time() + 4.0  # the processes' imports and setup come first
    config = {**common, "kind": kind, "seconds": seconds, "start_at": start_at}
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--child", json.dumps(config)],
            stdout=subprocess.PIPE,
            env=env,
            cwd=REPO,
        )
        for _ in range(PROCESSES)
    ]
    results = []
    for proc in procs:
        out, _ = proc.communicate(timeout=seconds + 120)
        if proc.returncode:
            raise RuntimeError(f"a {kind} worker process failed (exit {proc.returncode})")
        results.append(json.loads(out.decode().strip().splitlines()[-1]))
    return results


class FileAgent:
    """One per host, as Vault Agent: renders the secret into ``path`` once, then from
    ``start_at`` reads it every ``every`` s and renders it again by atomic replace.
    ``calls_until(t)``: its reads up to ``t`` (the first render included)."""

    def __init__(self, admin: Any, secret: str, path: Path, every: float, start_at: float) -> None:
        self.admin, self.secret, self.path, self.every, self.start_at = admin, secret, path, every, start_at
        self.reads: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.render()

    def render(self) -> None:
        value = self.admin.get_secret_value(SecretId=self.secret)["SecretString"]
        self.reads.append(time.time())
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(value)
        tmp.replace(self.path)

    def calls_until(self, end: float) -> int:
        return 1 + sum(1 for t in self.reads[1:] if t <= end)

    def _run(self) -> None:
        if self._stop.wait(max(self.start_at - time.time(), 0)):
            return
        while not self._stop.wait(self.every):
            self.render()

    def __enter__(self) -> FileAgent:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def run(*, quick: bool = False) -> dict[str, Any]:
    """The fleet benchmark: prints its table, returns its figures."""
    from tests.services.moto import MotoServer
    from tests.services.mysql import MysqlAdmin
    from tests.services.smagent import SecretsManagerAgent

    seconds = SECONDS / 2 if quick else SECONDS
    scale = 3600.0 / seconds
    print(f"\n== fleet: {PROCESSES} processes x {THREADS} threads on one host, one secret store ==")
    print(
        "  each request: new connection to the machine's MariaDB, SELECT 1, close, "
        f"{THINK_S * 1000:.0f} ms think"
    )
    print(
        f"  window {seconds:.0f} s; iamdb's sources on a clock {scale:.0f}x faster, per-host agents' "
        f"intervals / {scale:.0f}: the window is one hour of cache time"
    )
    admin_db = MysqlAdmin()
    user, password = f"iamdb_fleet_{secrets.token_hex(4)}", secrets.token_urlsafe(18)
    admin_db.sql("CREATE DATABASE IF NOT EXISTS test")
    admin_db.create_user(user, password)
    moto = MotoServer().start()
    folder = Path(tempfile.mkdtemp(prefix="iamdb-fleet-"))
    rows: list[dict[str, Any]] = []
    try:
        env = {**os.environ, **moto.environ(), "PYTHONPATH": str(REPO)}
        admin = moto.admin_client()
        secret = f"iamdb/fleet/{secrets.token_hex(4)}"
        admin.create_secret(Name=secret, SecretString=json.dumps({"username": user, "password": password}))
        common = {
            "host": admin_db.host,
            "port": admin_db.port,
            "user": user,
            "secret": secret,
            "threads": THREADS,
            "scale": scale,
        }

        def add(
            label: str,
            iamdb: bool,
            results: list[dict[str, Any]],
            host_extra: int,
            local: int | None,
            per_request: bool,
        ) -> None:
            ok = sum(r["ok"] for r in results)
            failed = sum(r["failed"] for r in results)
            process_calls = [r["get_secret_value"] for r in results]
            window_calls = sum(process_calls) + host_extra
            hour = 3600.0 / seconds if per_request else 1.0  # see the module's docstring
            row = {
                "label": label,
                "iamdb": iamdb,
                "requests": ok + failed,
                "failed": failed,
                "requests_per_s_per_process": (ok + failed) / seconds / PROCESSES,
                "calls_per_process": process_calls,
                "host_agent_calls": host_extra,
                "local_calls": local,
                "per_process_hour": sum(process_calls) / PROCESSES * hour,
                "per_host_hour": window_calls * hour,
                "per_request": window_calls / max(ok + failed, 1),
                "errors": sorted({e for r in results for e in r["errors"]})[:2],
            }
            rows.append(row)

        # 1. SecretsManagerSecret: every process reads the store itself.
        results = run_processes("sm", common, env, seconds)
        add("iamdb SecretsManagerSecret (ttl 300 s)", True, results, 0, None, per_request=False)

        # 2. SecretsManagerAgentSecret: one agent per host in front of the store.
        agent = SecretsManagerAgent(moto, ttl=AGENT_TTL / scale).start()
        try:
            results = run_processes(
                "agent", {**common, "endpoint": agent.endpoint}, {**env, "AWS_TOKEN": agent.token}, seconds
            )
            local = len(agent.requests)
            add(
                "iamdb SecretsManagerAgentSecret + agent",
                True,
                results,
                agent.upstream_calls,
                local,
                per_request=False,
            )
        finally:
            agent.stop()

        # 3. FileSecret: one agent per host renders the secret into a file.
        path = folder / "db.json"
        start_at = time.time() + 4.0
        file_agent = FileAgent(admin, secret, path, FILE_AGENT_EVERY / scale, start_at)
        with file_agent:
            results = run_processes("file", {**common, "path": str(path)}, env, seconds, start_at)
        # The agent's reads in the window (and the first render), as for the processes.
        add(
            "iamdb FileSecret + file agent",
            True,
            results,
            file_agent.calls_until(start_at + seconds),
            None,
            per_request=False,
        )

        # 4. For contrast: a call per new connection.
        results = run_processes("mysql_rds", common, env, seconds)
        add("django-mysql-rds + GetSecretValue", False, results, 0, None, per_request=True)
    finally:
        moto.stop()
        admin_db.drop_user(user)
        import shutil

        shutil.rmtree(folder, ignore_errors=True)

    print(
        f"\n  {'source':42} {'requests':>9} {'failed':>6} {'req/s':>6} {'upstream calls per hour':>30} "
        f"{'per request':>12}"
    )
    print(f"  {'':42} {'':>9} {'':>6} {'/proc':>6} {'per process':>14} {'per host':>15} {'':>12}")
    for r in rows:
        per_proc = f"{r['per_process_hour']:,.0f}"
        if r["host_agent_calls"]:
            per_proc += " (+agent)"
        print(
            f"  {r['label']:42} {r['requests']:9,d} {r['failed']:6d} {r['requests_per_s_per_process']:6.0f} "
            f"{per_proc:>14} {r['per_host_hour']:15,.0f} {r['per_request']:12.5f}"
        )
        for error in r["errors"]:
            print(f"      e.g. {error}")
    for r in rows:
        detail = f"GetSecretValue in the window per process {r['calls_per_process']}"
        if r["host_agent_calls"]:
            detail += f", by the per-host agent {r['host_agent_calls']}"
        if r["local_calls"] is not None:
            detail += f", local requests to the agent {r['local_calls']}"
        print(f"  {r['label']}: {detail}")
    print(
        "  (django-iam-dbauth, and django-mysql-rds with RDS IAM, sign a token per request: see "
        "the side-by-side table)"
    )
    return {"processes": PROCESSES, "threads": THREADS, "seconds": seconds, "scale": scale, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a 15 s window instead of 30 s")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0
    run(quick=args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
