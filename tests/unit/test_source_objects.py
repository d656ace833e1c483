"""Sources as objects in settings: copying, pickling, forking, truthiness, repr."""

from __future__ import annotations

import copy
import os
import pickle
import select
import signal
import threading

import pytest

import iamdb
import iamdb.sources
from iamdb import ConfigurationError, Credential, CredentialSource, Target
from iamdb.credentials import as_source
from iamdb.sources import CallableSource

SECRET = "s3cr3t-value"


def module_level_password() -> str:
    return SECRET


def test_deepcopy_and_copy_return_the_same_source() -> None:
    source = CallableSource(module_level_password, ttl=60)
    settings_dict = {"PASSWORD": source, "OPTIONS": {}}
    assert copy.deepcopy(settings_dict)["PASSWORD"] is source
    assert copy.copy(source) is source


def test_pickling_drops_cached_secrets_and_locks() -> None:
    source = CallableSource(module_level_password, ttl=60)
    assert source.get_password() == SECRET
    data = pickle.dumps(source)
    assert SECRET.encode() not in data
    clone = pickle.loads(data)
    assert clone.cached() is None
    assert clone.get_password() == SECRET
    assert clone.ttl == 60


def test_a_pickled_source_works_from_many_threads() -> None:
    clone = pickle.loads(pickle.dumps(CallableSource(module_level_password, ttl=60)))
    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(clone.get_password())) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert results == [SECRET] * 8


def test_sources_are_always_truthy() -> None:
    class Empty(CredentialSource):
        def __len__(self) -> int:
            return 0

    assert bool(CallableSource(module_level_password))
    assert bool(Empty())


def test_repr_and_str_hide_secrets() -> None:
    source = CallableSource(module_level_password, ttl=5)
    source.get_password()
    for text in (repr(source), str(source)):
        assert SECRET not in text
        assert "CallableSource" in text and "module_level_password" in text


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_fork_while_another_thread_holds_the_fetch_lock() -> None:
    """A lock held by a parent thread at fork() would deadlock the child forever,
    unless the child re-creates its locks."""
    in_fetch = threading.Event()
    release = threading.Event()

    def slow() -> str:
        in_fetch.set()
        release.wait(10)
        return SECRET

    source = CallableSource(slow, ttl=60)
    holder = threading.Thread(target=source.get_password)
    holder.start()
    assert in_fetch.wait(5)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: the parent's fetch never finishes here
        os.close(read)
        try:
            source.func = module_level_password
            ok = source.get_password() == SECRET
        except BaseException:
            ok = False
        os.write(write, b"1" if ok else b"0")
        os._exit(0)
    os.close(write)
    try:
        result = b""
        ready, _, _ = select.select([read], [], [], 10)
        if ready:
            result = os.read(read, 1)
    finally:
        release.set()
        holder.join(5)
        os.close(read)
        if result != b"1":
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    assert result == b"1", "the forked child could not get a credential"


def test_callable_source_without_ttl_calls_every_time() -> None:
    calls = []

    def func() -> str:
        calls.append(1)
        return SECRET

    source = CallableSource(func)
    for _ in range(3):
        source.get_password()
    assert len(calls) == 3


def test_callable_source_with_ttl_caches() -> None:
    calls = []

    def func() -> str:
        calls.append(1)
        return SECRET

    source = CallableSource(func, ttl=60)
    for _ in range(3):
        source.get_password()
    assert len(calls) == 1


def test_callable_source_can_return_a_credential() -> None:
    source = CallableSource(lambda: Credential(password=SECRET, username="bob"))
    assert source.get_credentials(Target()).username == "bob"


@pytest.mark.parametrize("bad", [None, "", 1, b"bytes"])
def test_callable_returning_nonsense_names_alias_and_source(bad: object) -> None:
    source = CallableSource(lambda: bad)
    with pytest.raises(ConfigurationError) as info:
        source.get_password(Target(alias="reports"))
    assert "'reports'" in str(info.value) and "CallableSource" in str(info.value)


def test_bare_callables_share_one_wrapper() -> None:
    assert as_source(module_level_password) is as_source(module_level_password)
    assert as_source("plain") is None
    with pytest.raises(ConfigurationError, match="PASSWORD must be"):
        as_source(42)


def test_public_names() -> None:
    assert set(iamdb.__all__) >= {
        "Credential",
        "CredentialSource",
        "Target",
        "RefreshPolicy",
        "IamdbError",
        "ConfigurationError",
        "CredentialError",
    }
    assert "CallableSource" in iamdb.sources.__all__
    with pytest.raises(AttributeError):
        iamdb.sources.NoSuchSource  # noqa: B018
