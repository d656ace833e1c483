"""The leak scan: no secret a test used may show up where people read.

Every integration test runs under a :class:`LeakScan` (``tests/integration/conftest.py``
makes it an autouse fixture named ``leaks``). While the test runs, the scan

- records the secrets: every password an iamdb source hands out (a recording
  wrapper around ``CredentialSource._checked_fetch``, the engine's one way to
  fetch), every password made by ``tests.conftest.new_password()``, the Vault
  tokens, AppRole secret ids and Kubernetes JWTs that go through hvac, the
  ``SecretString`` values written to or read from Secrets Manager through
  botocore, the ``X-Amz-Signature`` and ``X-Amz-Security-Token`` inside an IAM
  token, and whatever the test adds with :meth:`LeakScan.add`. Strings shorter
  than :data:`MIN_LENGTH` are ignored;
- records where a secret could be read: every log record of every logger
  (``iamdb``, ``botocore``, ``urllib3``, ``hvac``, ``psycopg``, ``psycopg.pool``
  and ``django.db.backends`` are set to DEBUG for the test), formatted with its
  traceback; every warning shown; every exception caught with ``pytest.raises``
  or given to :meth:`LeakScan.check_exception`; the ``repr`` of objects
  registered with :meth:`LeakScan.register` (and of what each DatabaseWrapper
  made by ``tests.conftest.make_wrapper`` holds); the argv of every child
  process started through ``subprocess.Popen``.

At the end of the test every secret is looked for in every one of those
places, and for each exception also in its whole ``__cause__``/``__context__``
chain (messages, notes, plain-data attributes, formatted traceback) and in Django's
technical 500 page, HTML and text, rendered as with ``DEBUG = True``. One hit
fails the test (:class:`LeakFound`) naming the secret's origin and the place.

What the test's own code holds is not a leak: frames of files under ``tests/``
are left out of the debug page (a real page shows the application's frames,
not a test's), and the child processes that the test services start
(``tests/services/``: ``psql`` with an ``ALTER ROLE ... PASSWORD``) or that test
code starts by itself (no iamdb or Django frame on the stack) are not scanned.
A deliberate leak (a control showing that an SDK does log a secret, a token
given to stock Django as a plain string) goes inside ``with leaks.paused():``.
"""

from __future__ import annotations

import bisect
import contextlib
import html
import json
import logging
import os
import subprocess
import sys
import threading
import traceback
import types
import urllib.parse
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

#: Shorter strings are not treated as secrets (they match too much by chance).
MIN_LENGTH = 8

#: Loggers set to DEBUG for the duration of each scanned test.
DEBUG_LOGGERS = ("iamdb", "botocore", "urllib3", "hvac", "psycopg", "psycopg.pool", "django.db.backends")

TESTS_DIR = Path(__file__).resolve().parent
_TESTS_PREFIX = str(TESTS_DIR) + os.sep
_SERVICES_PREFIX = str(TESTS_DIR / "services") + os.sep

#: The method of CredentialSource through which every fetched credential passes.
FETCH_ENTRY = "_checked_fetch"

#: How many exceptions of one test get a debug page rendered (the rest: text only).
MAX_PAGES = 40


class LeakFound(AssertionError):
    """A secret was found where it must not be."""


def _mask(secret: str) -> str:
    """A recognisable but harmless stand-in for a secret in a failure message."""
    return f"{secret[:4]}… ({len(secret)} chars)"


def _variants(secret: str) -> set[str]:
    """The forms a secret takes in the places scanned: as is, HTML-escaped, URL-quoted,
    escaped inside a Python repr."""
    forms = {
        secret,
        html.escape(secret),
        html.escape(secret, quote=False),
        urllib.parse.quote(secret, safe=""),
        urllib.parse.quote(secret, safe="/:"),
        repr(secret)[1:-1],
        json.dumps(secret)[1:-1],
    }
    return {form for form in forms if len(form) >= MIN_LENGTH}


def _derived(secret: str) -> list[tuple[str, str]]:
    """Secrets inside a secret: the signature and session token of a SigV4 query."""
    found: list[tuple[str, str]] = []
    if "X-Amz-" not in secret:
        return found
    query = secret.split("?", 1)[-1]
    for key, value in urllib.parse.parse_qsl(query, keep_blank_values=False):
        if key in ("X-Amz-Signature", "X-Amz-Security-Token"):
            found.append((value, f"the {key} of a token"))  # URL-quoted too: see _variants
    return found


class _Place:
    __slots__ = ("text", "where")

    def __init__(self, where: str, text: str) -> None:
        self.where = where
        self.text = text


class _LogHandler(logging.Handler):
    """Formats each record at once (its message, traceback and stack), as a real
    handler would write it."""

    def __init__(self, scan: LeakScan) -> None:
        super().__init__(logging.DEBUG)
        self.scan = scan
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        if self.scan._paused:
            return
        try:
            text = self.format(record)
        except Exception as exc:  # a record whose arguments do not format
            text = f"{record.name} {record.levelname} {record.msg!r} {record.args!r} ({exc!r})"
        self.scan._places.append(_Place(f"log record ({record.name}, {record.levelname})", text))


class LeakScan:
    """The secrets a test used and the places where none of them may appear."""

    def __init__(self, name: str = "") -> None:
        self.name = name
        self.secrets: dict[str, str] = {}
        self._places: list[_Place] = []
        self._exceptions: list[tuple[str, BaseException]] = []
        self._registered: list[tuple[str, Callable[[], str]]] = []
        self._paused = 0
        self._lock = threading.Lock()

    # -- what a test (or a recorder) tells the scan -------------------------------------

    def add(self, secret: object, origin: str = "leaks.add()") -> None:
        """Treat ``secret`` as a secret (ignored when shorter than MIN_LENGTH)."""
        if not isinstance(secret, str) or len(secret) < MIN_LENGTH:
            return
        secret = str.__str__(secret)  # a plain str: iamdb's SecretStr hides itself in repr()
        with self._lock:
            if secret in self.secrets:
                return
            self.secrets[secret] = origin
        for part, what in _derived(secret):
            self.add(part, f"{what} ({origin})")

    def check_exception(self, exc: BaseException, where: str = "") -> BaseException:
        """Scan ``exc`` at the end of the test: its chain and its debug page. Returns it."""
        if not self._paused:
            label = where or f"exception {type(exc).__name__}"
            with self._lock:
                if all(seen is not exc for _, seen in self._exceptions):
                    self._exceptions.append((label, exc))
        return exc

    def register(self, obj: object, what: str | None = None) -> object:
        """Scan ``repr(obj)`` at the end of the test (a settings dict, a wrapper...)."""
        self.register_text(what or f"repr of {type(obj).__name__}", lambda: repr(obj))
        return obj

    def register_text(self, what: str, render: Callable[[], str]) -> None:
        """Scan ``render()`` at the end of the test."""
        self._registered.append((what, render))

    def record_text(self, where: str, text: str) -> None:
        """A place of any kind: ``text`` is scanned at the end of the test."""
        if not self._paused:
            self._places.append(_Place(where, text))

    def record_child(self, argv: Any) -> None:
        """The argv of a child process (a sequence, or one string/path)."""
        if isinstance(argv, (str, bytes, os.PathLike)):
            argv = [argv]
        text = " ".join(os.fsdecode(a) if isinstance(a, (bytes, os.PathLike)) else str(a) for a in argv)
        self.record_text("argv of a child process", text)

    def recorded(self, where: str) -> list[str]:
        """The texts recorded so far in places whose label starts with ``where``
        (``"argv of a child process"``, ``"log record"``...)."""
        return [place.text for place in list(self._places) if place.where.startswith(where)]

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Within this block nothing is recorded as a place (secrets still are): for a
        control that makes an SDK leak on purpose."""
        self._paused += 1
        try:
            yield
        finally:
            self._paused -= 1

    # -- the scan ----------------------------------------------------------------------

    def places(self) -> Iterator[_Place]:
        """Every place to scan, the exceptions' chains and debug pages rendered now."""
        yield from list(self._places)
        for what, render in self._registered:
            try:
                text = render()
            except Exception as exc:
                text = f"<repr raised {exc!r}>"
            yield _Place(what, text)
        for number, (label, exc) in enumerate(list(self._exceptions)):
            yield from exception_places(label, exc)
            if number < MAX_PAGES:
                yield from debug_page_places(label, exc)

    def findings(self) -> list[str]:
        """One line per (secret, place) found."""
        if not self.secrets:
            return []
        places = list(self.places())
        # One haystack, searched once per form of each secret (thousands of log records
        # in a load test), each hit mapped back to its place.
        starts: list[int] = []
        offset = 0
        for place in places:
            starts.append(offset)
            offset += len(place.text) + 1
        haystack = "\0".join(place.text for place in places)
        found: list[str] = []
        reported: set[tuple[str, str]] = set()
        for secret, origin in self.secrets.items():
            for form in _variants(secret):
                index = haystack.find(form)
                while index >= 0:
                    number = bisect.bisect_right(starts, index) - 1
                    place = places[number]
                    if (secret, place.where) not in reported:
                        reported.add((secret, place.where))
                        found.append(
                            f"secret {_mask(secret)} from {origin} found in {place.where}: "
                            f"…{_context(place.text, index - starts[number], secret)}…"
                        )
                    index = haystack.find(form, starts[number] + len(place.text) + 1)
        return found

    def check(self) -> None:
        """Raise :class:`LeakFound` when any secret was found anywhere."""
        found = self.findings()
        if found:
            raise LeakFound(
                f"leak scan{' of ' + self.name if self.name else ''}: {len(found)} leak(s)\n  "
                + "\n  ".join(found)
            )


def _context(text: str, index: int, secret: str, width: int = 70) -> str:
    """The text around a hit, with every form of the secret in it masked."""
    forms = sorted(_variants(secret) | {secret}, key=len, reverse=True)
    margin = max(len(form) for form in forms)
    region = text[max(index - width - margin, 0) : index + width + 2 * margin]
    for form in forms:
        region = region.replace(form, "<SECRET>")
    at = region.find("<SECRET>")
    return " ".join(region[max(at - width, 0) : at + len("<SECRET>") + width].split())


# -- exceptions ---------------------------------------------------------------------------


def exception_chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and every exception it links to through ``__cause__``/``__context__``."""
    chain: list[BaseException] = []
    pending: list[BaseException | None] = [exc]
    while pending:
        current = pending.pop()
        if current is None or any(current is seen for seen in chain):
            continue
        chain.append(current)
        pending.extend((current.__context__, current.__cause__))
    return chain


def exception_places(label: str, exc: BaseException) -> Iterator[_Place]:
    formatted = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    yield _Place(f"{label}: formatted traceback", formatted)
    for member in exception_chain(exc):
        name = type(member).__name__
        parts = [str(member), repr(member), repr(member.args), *getattr(member, "__notes__", ())]
        with contextlib.suppress(TypeError):  # no __dict__
            parts.extend(_plain_data(value) for value in vars(member).values())
        yield _Place(
            f"{label}: chain member {name} (message, args, notes, data attributes)", "\n".join(parts)
        )


def _plain_data(value: object, depth: int = 0) -> str:
    """The text of an exception's attribute when it is plain data (a str, a number, a
    dict or list of them: an SDK's parsed error response); nothing for other objects,
    whose repr is not what anyone shows."""
    if isinstance(value, (str, bytes, int, float)) or value is None:
        return repr(value)
    if depth < 4 and isinstance(value, dict):
        return " ".join(f"{_plain_data(k, depth + 1)}: {_plain_data(v, depth + 1)}" for k, v in value.items())
    if depth < 4 and isinstance(value, (list, tuple)):
        return " ".join(_plain_data(item, depth + 1) for item in value)
    return ""


def _is_test_code(frame: types.FrameType) -> bool:
    return os.path.abspath(frame.f_code.co_filename).startswith(_TESTS_PREFIX)


def _without_test_frames(tb: types.TracebackType | None) -> types.TracebackType | None:
    kept: list[types.TracebackType] = []
    while tb is not None:
        if not _is_test_code(tb.tb_frame):
            kept.append(tb)
        tb = tb.tb_next
    rebuilt: types.TracebackType | None = None
    for entry in reversed(kept):
        rebuilt = types.TracebackType(rebuilt, entry.tb_frame, entry.tb_lasti, entry.tb_lineno)
    return rebuilt


def render_debug_page(exc: BaseException) -> tuple[str, str]:
    """Django's technical 500 page for ``exc`` (HTML, text), as ``DEBUG = True`` serves
    it for a GET request, without the frames of test code."""
    from django.conf import settings
    from django.core.exceptions import ImproperlyConfigured
    from django.test import RequestFactory
    from django.test.utils import override_settings
    from django.views.debug import ExceptionReporter

    chain = exception_chain(exc)
    saved = [(member, member.__traceback__) for member in chain]
    try:
        for member, tb in saved:
            member.__traceback__ = _without_test_frames(tb)
        request = RequestFactory().get("/leak-scan/")
        with override_settings(DEBUG=True, ROOT_URLCONF=__name__):
            try:
                settings.SECRET_KEY  # noqa: B018 - Django refuses an empty one
            except ImproperlyConfigured:
                settings.SECRET_KEY = _PAGE_SECRET_KEY  # on the override: dropped with it
            reporter = ExceptionReporter(request, type(exc), exc, exc.__traceback__)
            return reporter.get_traceback_html(), reporter.get_traceback_text()
    finally:
        for member, tb in saved:
            member.__traceback__ = tb


#: SECRET_KEY while a debug page is rendered when the test settings have none (the page
#: shows it masked; Django refuses an empty one).
_PAGE_SECRET_KEY = "leak-scan-settings-key"

#: ROOT_URLCONF while a debug page is rendered (the page resolves the request's path).
urlpatterns: list[Any] = []


def debug_page_places(label: str, exc: BaseException) -> Iterator[_Place]:
    try:
        page_html, page_text = render_debug_page(exc)
    except Exception as error:
        raise RuntimeError(f"leak scan: Django's debug page for {label} did not render: {error!r}") from error
    yield _Place(f"{label}: Django debug page (HTML)", page_html)
    yield _Place(f"{label}: Django debug page (text)", page_text)


# -- the recorders ------------------------------------------------------------------------

_active: LeakScan | None = None


def active() -> LeakScan | None:
    """The scan of the test running now, if any."""
    return _active


class _Patches:
    """Attributes replaced by recording wrappers, restored in reverse order."""

    def __init__(self) -> None:
        self.saved: list[tuple[Any, str, Any]] = []
        self.done: set[str] = set()

    def replace(self, owner: Any, name: str, value: Any) -> None:
        self.saved.append((owner, name, vars(owner)[name]))
        setattr(owner, name, value)

    def restore(self) -> None:
        while self.saved:
            owner, name, value = self.saved.pop()
            setattr(owner, name, value)
        self.done.clear()


_patches = _Patches()


def _record_fetches() -> None:
    from iamdb.credentials import CredentialSource

    original = CredentialSource.__dict__.get(FETCH_ENTRY)
    if original is None:
        raise RuntimeError(
            f"tests/leakscan.py: iamdb.credentials.CredentialSource.{FETCH_ENTRY} is gone; "
            "point FETCH_ENTRY at the engine's one entry to fetch"
        )

    def recording_fetch(self: Any, *args: Any, **kwargs: Any) -> Any:
        credential = original(self, *args, **kwargs)
        scan = _active
        if scan is not None:
            scan.add(getattr(credential, "password", None), f"a password from {self.describe()}")
        return credential

    _patches.replace(CredentialSource, FETCH_ENTRY, recording_fetch)


def _record_test_helpers() -> None:
    """new_password() and make_wrapper() of tests.conftest, in every test module that
    imported them."""
    conftest = sys.modules.get("tests.conftest")
    if conftest is None:
        return
    new_password = conftest.new_password
    make_wrapper = conftest.make_wrapper

    def recording_new_password() -> str:
        password: str = new_password()
        scan = _active
        if scan is not None:
            scan.add(password, "new_password()")
        return password

    def recording_make_wrapper(settings_dict: dict[str, Any], alias: str = "default") -> Any:
        wrapper = make_wrapper(settings_dict, alias)
        scan = _active
        if scan is not None and not isinstance(settings_dict.get("PASSWORD"), str):
            # With a plain string PASSWORD the settings hold it by design (stock Django).
            scan.register(wrapper, f"repr of DatabaseWrapper {alias!r}")
            scan.register_text(
                f"repr of the attributes of DatabaseWrapper {alias!r} (but settings_dict)",
                lambda: repr({k: v for k, v in vars(wrapper).items() if k != "settings_dict"}),
            )
        return wrapper

    for name, module in list(sys.modules.items()):
        if module is None or not (name == "tests" or name.startswith("tests.")):
            continue
        if getattr(module, "new_password", None) is new_password:
            _patches.replace(module, "new_password", recording_new_password)
        if getattr(module, "make_wrapper", None) is make_wrapper:
            _patches.replace(module, "make_wrapper", recording_make_wrapper)


def _child_is_the_tests_own() -> bool:
    """Whether the child process about to start is the test's own doing: started by a
    test service (``tests/services/``: ``psql -c "ALTER ROLE ... PASSWORD ..."``), or
    by test code with no iamdb or Django code beneath it on the stack. A test's spy
    around iamdb's ``subprocess.run`` does not make dbshell's child the test's own."""
    frame: types.FrameType | None = sys._getframe(2)
    while frame is not None and frame.f_code.co_filename in (subprocess.__file__, __file__):
        frame = frame.f_back
    if frame is None:
        return False
    nearest = os.path.abspath(frame.f_code.co_filename)
    if nearest.startswith(_SERVICES_PREFIX):
        return True
    if not nearest.startswith(_TESTS_PREFIX):
        return False
    while frame is not None:
        module = str(frame.f_globals.get("__name__", ""))
        if module.startswith(("iamdb.", "django.")):
            return False
        frame = frame.f_back
    return True


def _record_children() -> None:
    original = subprocess.Popen.__init__

    def recording_init(self: Any, args: Any, *rest: Any, **kwargs: Any) -> None:
        scan = _active
        if scan is not None and not _child_is_the_tests_own():
            scan.record_child(args)
        original(self, args, *rest, **kwargs)

    _patches.replace(subprocess.Popen, "__init__", recording_init)


def _record_warnings() -> None:
    original = getattr(warnings, "_showwarnmsg", None)
    if original is None:  # pragma: no cover - a Python without the hook
        return

    def recording_showwarnmsg(msg: Any) -> None:
        scan = _active
        if scan is not None:
            scan.record_text(
                f"warning ({getattr(msg.category, '__name__', msg.category)})",
                f"{msg.message} ({msg.filename}:{msg.lineno})",
            )
        original(msg)

    _patches.replace(warnings, "_showwarnmsg", recording_showwarnmsg)


def _record_raises() -> None:
    """Every exception caught by ``pytest.raises`` is checked."""
    from _pytest._code.code import ExceptionInfo

    original = ExceptionInfo.fill_unfilled

    def recording_fill_unfilled(self: Any, exc_info: Any) -> None:
        original(self, exc_info)
        scan = _active
        if scan is not None and exc_info[1] is not None:
            scan.check_exception(exc_info[1], f"exception {exc_info[0].__name__} (caught by pytest.raises)")

    _patches.replace(ExceptionInfo, "fill_unfilled", recording_fill_unfilled)


_SECRET_OPERATIONS = ("CreateSecret", "PutSecretValue", "UpdateSecret")


def _add_secret_string(scan: LeakScan, value: object, origin: str) -> None:
    if not isinstance(value, str):
        return
    scan.add(value, origin)
    with contextlib.suppress(ValueError):
        parsed = json.loads(value)
        if isinstance(parsed, dict):
            scan.add(parsed.get("password"), f"the password in {origin}")


def _record_botocore() -> None:
    client_module = sys.modules.get("botocore.client")
    if client_module is None:
        return
    base = client_module.BaseClient
    original = base._make_api_call

    def recording_call(self: Any, operation_name: str, api_params: Any) -> Any:
        scan = _active
        if scan is not None and operation_name in _SECRET_OPERATIONS and isinstance(api_params, dict):
            _add_secret_string(scan, api_params.get("SecretString"), f"a SecretString ({operation_name})")
        result = original(self, operation_name, api_params)
        scan = _active
        if scan is not None and operation_name == "GetSecretValue" and isinstance(result, dict):
            _add_secret_string(scan, result.get("SecretString"), "a SecretString (GetSecretValue)")
        return result

    _patches.replace(base, "_make_api_call", recording_call)


_VAULT_SECRET_KEYS = ("client_token", "secret_id", "jwt", "token")


def _add_vault_secrets(scan: LeakScan, data: object, origin: str, depth: int = 0) -> None:
    if not isinstance(data, dict) or depth > 3:
        return
    for key, value in data.items():
        if key in _VAULT_SECRET_KEYS and isinstance(value, str):
            scan.add(value, f"a Vault {key} ({origin})")
        elif isinstance(value, dict):
            _add_vault_secrets(scan, value, origin, depth + 1)


def _record_hvac() -> None:
    adapters = sys.modules.get("hvac.adapters")
    if adapters is None:
        return
    original = adapters.JSONAdapter.request

    def recording_request(self: Any, *args: Any, **kwargs: Any) -> Any:
        scan = _active
        if scan is not None:
            scan.add(getattr(self, "token", None), "a Vault token (sent)")
            _add_vault_secrets(scan, kwargs.get("json"), "sent")
        response = original(self, *args, **kwargs)
        scan = _active
        if scan is not None:
            _add_vault_secrets(scan, response, "received")
        return response

    _patches.replace(adapters.JSONAdapter, "request", recording_request)


_RECORDERS: dict[str, Callable[[], None]] = {
    "fetches": _record_fetches,
    "children": _record_children,
    "warnings": _record_warnings,
    "raises": _record_raises,
}
# Recorders for modules that are wrapped once they are imported.
_LATE_RECORDERS: dict[str, tuple[str, Callable[[], None]]] = {
    "test helpers": ("tests.conftest", _record_test_helpers),
    "botocore": ("botocore.client", _record_botocore),
    "hvac": ("hvac.adapters", _record_hvac),
}


def install() -> None:
    """Put the recording wrappers in place (idempotent; cheap when already done)."""
    for name, recorder in _RECORDERS.items():
        if name not in _patches.done:
            recorder()
            _patches.done.add(name)
    for name, (module, recorder) in _LATE_RECORDERS.items():
        if name not in _patches.done and module in sys.modules:
            recorder()
            _patches.done.add(name)


def uninstall() -> None:
    _patches.restore()


@contextlib.contextmanager
def recorders() -> Iterator[None]:
    """The recording wrappers, for a whole session."""
    install()
    try:
        yield
    finally:
        uninstall()


@contextlib.contextmanager
def scanning(name: str = "") -> Iterator[LeakScan]:
    """Run a test under a new scan; raise :class:`LeakFound` at the end if it found a leak."""
    global _active
    install()  # modules imported since the last test (botocore, hvac)
    scan = LeakScan(name)
    previous = _active
    _active = scan
    handler = _LogHandler(scan)
    root = logging.getLogger()
    levels = {name: logging.getLogger(name).level for name in DEBUG_LOGGERS}
    for logger_name in DEBUG_LOGGERS:
        logging.getLogger(logger_name).setLevel(logging.DEBUG)
    root.addHandler(handler)
    try:
        yield scan
    finally:
        root.removeHandler(handler)
        for logger_name, level in levels.items():
            logging.getLogger(logger_name).setLevel(level)
        _active = previous
    scan.check()
