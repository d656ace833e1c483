"""FileSecret against the real database servers: a file that an agent rewrites (atomic
replace, as Vault Agent does; the ``..data`` symlink swap of a Kubernetes secret volume),
under load, through Django's pool, dbshell and test databases."""

from __future__ import annotations

import copy
import json
import os
import pickle
import secrets
import shutil
import subprocess
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import django
import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db.utils import OperationalError

from iamdb import ConfigurationError, CredentialError, Target
from iamdb.sources import FileSecret
from tests.conftest import DbUser, make_wrapper, new_password
from tests.leakscan import LeakScan
from tests.load import run_load

CURRENT_USER = {
    "postgresql": "SELECT current_user",
    "mysql": "SELECT SUBSTRING_INDEX(CURRENT_USER(), '@', 1)",
}


def whoami(wrapper: Any) -> str:
    with wrapper.cursor() as cursor:
        cursor.execute(CURRENT_USER[wrapper.vendor])
        return str(cursor.fetchone()[0])


# -- how agents write files -------------------------------------------------------------


def replace_atomically(path: Path, text: str) -> None:
    """What Vault Agent (and most agents) do: write a temporary file beside it, rename it over."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


class SecretVolume:
    """A Kubernetes secret volume, written as the kubelet's AtomicWriter does: the files
    live in a timestamped directory, ``..data`` links to it, and each visible name links
    to ``..data/<name>``. An update writes a new directory, swaps ``..data`` with a
    rename, then removes the old directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(exist_ok=True)

    def write(self, files: dict[str, str]) -> None:
        data = self.root / "..data"
        old = os.readlink(data) if data.is_symlink() else None
        new = self.root / f"..{time.strftime('%Y_%m_%d_%H_%M_%S')}.{secrets.token_hex(4)}"
        new.mkdir()
        for name, text in files.items():
            (new / name).write_text(text)
        link = self.root / "..data_tmp"
        os.symlink(new.name, link)
        os.rename(link, data)
        for name in files:
            visible = self.root / name
            if not visible.is_symlink():
                os.symlink(f"..data/{name}", visible)
        if old is not None:
            shutil.rmtree(self.root / old)


def rds_json(user: DbUser, password: str | None = None) -> str:
    return json.dumps({"username": user.name, "password": password or user.password, "engine": user.vendor})


# -- logging in ---------------------------------------------------------------------------


def test_a_text_file_is_the_password_with_one_trailing_newline_stripped(
    db_user: DbUser, tmp_path: Path
) -> None:
    path = tmp_path / "password"
    path.write_text(db_user.password + "\n")
    source = FileSecret(path)
    wrapper = make_wrapper(db_user.settings(source))
    assert whoami(wrapper) == db_user.name
    wrapper.close()
    # One newline only: a second one is part of the password (and the server refuses it).
    path.write_text(db_user.password + "\n\n")
    assert source.get_password(Target(user=db_user.name)) == db_user.password + "\n"


def test_a_json_file_gives_the_user_and_the_password(db_user: DbUser, tmp_path: Path) -> None:
    path = tmp_path / "db.json"
    path.write_text(json.dumps({"user": db_user.name, "pass": db_user.password}))
    source = FileSecret(str(path), format="json", username_key="user", password_key="pass")
    settings_dict = db_user.settings(source, USER="")
    wrapper = make_wrapper(settings_dict)
    assert whoami(wrapper) == db_user.name
    wrapper.close()
    assert settings_dict["USER"] == "" and settings_dict["PASSWORD"] is source
    # The file's user wins over USER.
    wrapper = make_wrapper(db_user.settings(source, USER="someone_else"))
    assert whoami(wrapper) == db_user.name
    wrapper.close()


@pytest.fixture
def other_user(db_user: DbUser) -> Iterator[DbUser]:
    """A second user on the same server (alternating-users rotation)."""
    name = f"iamdb_{secrets.token_hex(4)}"
    password = new_password()
    if db_user.vendor == "postgresql":
        db_user.server.create_role(name, password)
    else:
        db_user.server.create_user(name, password)
    yield DbUser(db_user.vendor, name, password, db_user.server)
    if db_user.vendor == "postgresql":
        db_user.server.sql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{name}'")
        db_user.server.sql(f"DROP OWNED BY {name}")
        db_user.server.sql(f"DROP ROLE IF EXISTS {name}")
    else:
        db_user.server.drop_user(name)


@pytest.mark.parametrize("layout", ["replace", "kubernetes"])
def test_a_new_user_in_the_file_is_used_by_the_next_connection(
    db_user: DbUser, other_user: DbUser, tmp_path: Path, layout: str
) -> None:
    """Alternating users: both work, so nothing is refused; the change check alone
    makes the next connection use the new user, without reading the file for each one."""
    if layout == "replace":
        path = tmp_path / "db.json"

        def publish(user: DbUser) -> None:
            replace_atomically(path, rds_json(user))
    else:
        volume = SecretVolume(tmp_path / "secret")
        path = volume.root / "credentials"

        def publish(user: DbUser) -> None:
            volume.write({"credentials": rds_json(user)})

    publish(db_user)
    source = FileSecret(path)
    settings_dict = db_user.settings(source, USER="")
    for _ in range(3):
        wrapper = make_wrapper(settings_dict)
        assert whoami(wrapper) == db_user.name
        wrapper.close()
    assert source._cache.fetches == 1  # three connections, one read
    publish(other_user)
    wrapper = make_wrapper(settings_dict)
    assert whoami(wrapper) == other_user.name
    wrapper.close()
    assert source._cache.fetches == 2


def test_a_refused_password_makes_it_read_the_file_again(db_user: DbUser, tmp_path: Path) -> None:
    """The file changed in place within the filesystem's timestamp tick (same size, same
    inode, same mtime): the stat does not show it, the refused login does."""
    path = tmp_path / "password"
    path.write_text(db_user.password)
    source = FileSecret(path)
    wrapper = make_wrapper(db_user.settings(source))
    assert whoami(wrapper) == db_user.name
    wrapper.close()
    before = os.stat(path)
    new = db_user.rotate()
    assert len(new) == before.st_size
    with open(path, "r+") as handle:  # in place: same inode
        handle.write(new)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    wrapper = make_wrapper(db_user.settings(source))
    assert whoami(wrapper) == db_user.name
    wrapper.close()
    assert source._cache.fetches == 2


# -- rotation under load --------------------------------------------------------------------


class FileRotator:
    """Changes the server's password, then publishes it ``lag`` seconds later through the
    file, as an agent does; every ``every`` seconds, ``rotations`` times."""

    def __init__(self, user: DbUser, publish: Any, *, every: float = 0.4, lag: float = 0.1) -> None:
        self.user, self.publish, self.every, self.lag = user, publish, every, lag
        self.rotations = 0

    def __call__(self, rotations: int = 3) -> None:
        for _ in range(rotations):
            time.sleep(self.every)
            new = self.user.rotate()
            time.sleep(self.lag)
            self.publish(self.user, new)
            self.rotations += 1
        time.sleep(self.every)


def publisher(layout: str, root: Path) -> tuple[Path, Any]:
    if layout == "replace":
        path = root / "db.json"
        return path, lambda user, password=None: replace_atomically(path, rds_json(user, password))
    volume = SecretVolume(root / "secret")
    return volume.root / "credentials", lambda user, password=None: volume.write(
        {"credentials": rds_json(user, password)}
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("vendor", "layout"), [("postgresql", "kubernetes"), ("mysql", "replace"), ("mysql", "kubernetes")]
)
def test_file_rotation_under_load_fails_no_request(db_user: DbUser, tmp_path: Path, layout: str) -> None:
    """Several threads, a new connection per request, while the file is rotated by an
    atomic replace or a ``..data`` symlink swap (the old directory removed at once)."""
    path, publish = publisher(layout, tmp_path)
    publish(db_user)
    source = FileSecret(path)
    settings_dict = db_user.settings(source, USER="")
    local = threading.local()

    def request() -> None:
        wrapper = getattr(local, "wrapper", None)
        if wrapper is None:
            wrapper = local.wrapper = make_wrapper(settings_dict)
        try:
            assert whoami(wrapper) == db_user.name
        finally:
            wrapper.close()

    rotator = FileRotator(db_user, publish)
    ok, failures = run_load(request, threads=4, seconds=20, during=rotator)
    print(f"{layout}: {ok} requests, {len(failures)} failed, {source._cache.fetches} reads")
    assert failures == [], failures[:3]
    assert rotator.rotations == 3
    # A few reads per rotation (the change, a refusal while the file lags), never one per request.
    assert source._cache.fetches <= 1 + rotator.rotations * 6 < ok


@pytest.mark.slow
@pytest.mark.skipif(django.VERSION < (5, 1), reason="Django's pool exists from 5.1")
@pytest.mark.parametrize("vendor", ["postgresql"])
def test_pool_through_symlink_swaps(db_user: DbUser, tmp_path: Path) -> None:
    """Django's pool opens new connections (short max_lifetime) while the secret volume
    is swapped: each gets the file's current user and password."""
    path, publish = publisher("kubernetes", tmp_path)
    publish(db_user)
    source = FileSecret(path)
    settings_dict = db_user.settings(
        source, USER="", OPTIONS={"pool": {"min_size": 1, "max_size": 4, "max_lifetime": 1.0, "timeout": 10}}
    )
    alias = f"file_pool_{new_password()[-8:]}"
    local = threading.local()

    def request() -> None:
        wrapper = getattr(local, "wrapper", None)
        if wrapper is None:
            wrapper = local.wrapper = make_wrapper(settings_dict, alias=alias)
        try:
            assert whoami(wrapper) == db_user.name
        finally:
            wrapper.close()

    rotator = FileRotator(db_user, publish, every=0.6)
    try:
        ok, failures = run_load(request, threads=4, seconds=20, during=lambda: rotator(3))
        stats = make_wrapper(settings_dict, alias=alias).pool.get_stats()
    finally:
        make_wrapper(settings_dict, alias=alias).close_pool()
    assert failures == [], failures[:3]
    assert ok > 0 and rotator.rotations == 3
    assert stats["connections_num"] > rotator.rotations  # the pool did log in again across the swaps


# -- Django's other paths -------------------------------------------------------------------

DBSHELL = {
    "postgresql": ["-X", "-A", "-t", "-c", "SELECT session_user"],
    "mysql": ["-N", "-B", "-e", "SELECT SUBSTRING_INDEX(CURRENT_USER(), '@', 1)"],
}


def test_dbshell_with_a_file_secret_gets_the_password_in_its_environment_only(
    db_user: DbUser, tmp_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, publish = publisher("kubernetes", tmp_path)
    publish(db_user)
    wrapper = make_wrapper(db_user.settings(FileSecret(path), USER=""))
    calls: list[tuple[list[str], dict[str, str]]] = []
    real_run = subprocess.run

    def run(args: list[str], **kwargs: Any) -> Any:
        calls.append((list(args), dict(kwargs.get("env") or {})))
        return real_run(args, **kwargs)

    monkeypatch.setattr(subprocess, "run", run)
    capfd.readouterr()
    wrapper.client.runshell(DBSHELL[db_user.vendor])
    assert capfd.readouterr().out.strip() == db_user.name  # the real client logged in
    ((argv, env),) = calls
    assert all(db_user.password not in arg for arg in argv)
    assert db_user.password in env.values()  # PGPASSWORD / MYSQL_PWD


def test_test_databases_are_created_and_dropped_with_the_file_s_user(
    db_user: DbUser, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Django's test database creation (the connection to the server's maintenance
    database included) uses the credential from the file."""
    path, publish = publisher("replace", tmp_path)
    publish(db_user)
    test_name = f"test_iamdb_{secrets.token_hex(4)}"
    if db_user.vendor == "mysql":
        db_user.server.sql(f"GRANT ALL ON `{test_name}`.* TO '{db_user.name}'@'%'")
    settings_dict = db_user.settings(FileSecret(path), USER="", TEST={"NAME": test_name})
    wrapper = make_wrapper(settings_dict)
    created = wrapper.creation._create_test_db(verbosity=0, autoclobber=True, keepdb=False)
    try:
        assert created == test_name
        inside = make_wrapper({**settings_dict, "NAME": test_name})
        assert whoami(inside) == db_user.name
        inside.close()
    finally:
        wrapper.creation._destroy_test_db(test_name, verbosity=0)
    wrapper = make_wrapper({**settings_dict, "NAME": test_name})
    with pytest.raises(OperationalError):
        wrapper.ensure_connection()  # dropped


# -- errors ----------------------------------------------------------------------------------


@pytest.fixture
def nobody(pg_server: Any) -> DbUser:
    """PostgreSQL settings with a user that does not exist: for errors raised before any login."""
    return DbUser("postgresql", "iamdb_nobody", "unused-password", pg_server)


@pytest.mark.parametrize("vendor", ["postgresql"])
def test_a_missing_file_names_alias_path_and_fix(db_user: DbUser, tmp_path: Path) -> None:
    path = tmp_path / "not-yet-rendered"
    wrapper = make_wrapper(db_user.settings(FileSecret(path)), alias="billing")
    with pytest.raises(OperationalError) as info:
        wrapper.ensure_connection()
    assert isinstance(info.value, CredentialError)
    message = str(info.value)
    assert "database 'billing'" in message and str(path) in message
    assert "does not exist" in message and "agent" in message
    assert isinstance(info.value.__cause__, FileNotFoundError)
    # Rendered later: the next connection reads it at once (no waiting out a backoff).
    path.write_text(db_user.password)
    wrapper.ensure_connection()
    assert whoami(wrapper) == db_user.name
    wrapper.close()


def test_a_dangling_kubernetes_link_names_where_it_points(nobody: DbUser, tmp_path: Path) -> None:
    path, publish = publisher("kubernetes", tmp_path)
    publish(nobody)
    shutil.rmtree(tmp_path / "secret" / os.readlink(tmp_path / "secret" / "..data"))
    wrapper = make_wrapper(nobody.settings(FileSecret(path)), alias="billing")
    with pytest.raises(CredentialError) as info:
        wrapper.ensure_connection()
    assert "does not exist (it resolves to" in str(info.value)


def test_an_unreadable_file_says_so(tmp_path: Path) -> None:
    """Checked in a forked child that is not root (root reads any file)."""
    folder = tmp_path / "unreadable"
    folder.mkdir()
    folder.chmod(0o755)
    path = folder / "password"
    path.write_text(new_password())
    path.chmod(0o600)
    source = FileSecret(path)
    read, write = os.pipe()
    with warnings.catch_warnings():
        # Python 3.12+ warns that forking a multi-threaded process may deadlock the child:
        # what this test does on purpose (the servers' threads run).
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(read)
            if os.geteuid() == 0:
                os.setgid(65534)
                os.setuid(65534)
            try:
                source.get_credentials(Target(alias="billing", user="app"))
                message = "no error"
            except CredentialError as exc:
                message = str(exc)
            os.write(write, message.encode())
        finally:
            os._exit(0)
    os.close(write)
    message = os.read(read, 4096).decode()
    os.close(read)
    os.waitpid(pid, 0)
    assert "database 'billing'" in message and str(path) in message
    assert "not readable by this process (uid " in message and "defaultMode" in message


@pytest.mark.parametrize(
    ("content", "format", "kind", "expected"),
    [
        ("", "auto", CredentialError, "the file is empty"),
        ("\n", "text", CredentialError, "the file is empty"),
        ('{"username": "app", "password": ', "json", ImproperlyConfigured, "is not valid JSON (line 1"),
        ('["a list"]', "json", ImproperlyConfigured, "is JSON but not an object"),
        (
            '{"username": "app", "pass": "hunter2-value"}',
            "auto",
            ImproperlyConfigured,
            "no non-empty string 'password' key (its keys: pass, username)",
        ),
    ],
    ids=["empty", "only-a-newline", "bad-json", "not-an-object", "no-password-key"],
)
def test_a_bad_file_is_a_clear_error_without_its_contents(
    nobody: DbUser, tmp_path: Path, content: str, format: str, kind: type, expected: str, leaks: LeakScan
) -> None:
    leaks.add("hunter2-value")
    path = tmp_path / "db.json"
    path.write_text(content)
    wrapper = make_wrapper(nobody.settings(FileSecret(path, format=format)), alias="billing")
    with pytest.raises(kind) as info:
        wrapper.ensure_connection()
    message = str(info.value)
    assert "database 'billing'" in message and str(path) in message and expected in message
    assert "hunter2" not in message


def test_a_text_file_needs_user(nobody: DbUser, tmp_path: Path) -> None:
    path = tmp_path / "password"
    path.write_text(nobody.password)
    wrapper = make_wrapper(nobody.settings(FileSecret(path), USER=""), alias="billing")
    with pytest.raises(ImproperlyConfigured) as info:
        wrapper.ensure_connection()
    assert "USER is empty and the file has no 'username' key" in str(info.value)


def test_a_directory_is_not_the_file(nobody: DbUser, tmp_path: Path) -> None:
    wrapper = make_wrapper(nobody.settings(FileSecret(tmp_path)), alias="billing")
    with pytest.raises(ConfigurationError) as info:
        wrapper.ensure_connection()
    assert "the path is a directory" in str(info.value)


# -- copies, pickles, forks -------------------------------------------------------------------


@pytest.mark.parametrize("vendor", ["postgresql"])
def test_file_secret_survives_deepcopy_pickle_and_fork(
    db_user: DbUser, tmp_path: Path, leaks: LeakScan
) -> None:
    path, publish = publisher("kubernetes", tmp_path)
    publish(db_user)
    source = FileSecret(path)
    target = Target(alias="default", user="")
    assert source.get_password(target) == db_user.password
    assert copy.deepcopy(source) is source
    data = pickle.dumps(source)
    assert db_user.password.encode() not in data  # nothing cached travels
    clone = pickle.loads(data)
    assert clone.cached(target) is None and clone.path == source.path
    assert clone.get_password(target) == db_user.password
    leaks.register(source)
    assert db_user.password not in repr(source)

    read, write = os.pipe()
    with warnings.catch_warnings():
        # Python 3.12+ warns that forking a multi-threaded process may deadlock the child:
        # what this test does on purpose (the servers' threads run).
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            os.close(read)
            # The cached credential, no read; then a swap is seen.
            kept = source.get_password(target) == db_user.password and source._cache.fetches == 1
            publish(db_user, "pw-from-the-child-" + "x" * 10)
            changed = source.get_password(target) == "pw-from-the-child-" + "x" * 10
            os.write(write, b"ok" if kept and changed else b"no")
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    answer = os.read(read, 10)
    os.close(read)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0 and answer == b"ok"
