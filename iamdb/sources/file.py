"""A credential that an agent renders into a file: Vault Agent templates, a Kubernetes
secret volume, the Secrets Store CSI driver. One agent per host serves every process.

The file is read when it changes: each new connection costs one ``os.stat()`` of the
file the path resolves to (its device, inode, mtime, ctime and size), not a read.
Agents replace the file atomically (a rename, or Kubernetes' swap of the ``..data``
symlink to a new directory): the stat then names another inode. Kubernetes removes
the old directory right after the swap, so a read that resolved the link just
before may find its file gone: it resolves the link again and retries.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

from ..clock import Clock
from ..credentials import CredentialSource
from ..deadline import Deadline
from ..engine import RefreshPolicy
from ..errors import ConfigurationError, CredentialError, IamdbError, describe, secret_free
from ..values import Credential, Target
from ._args import bad_argument, check_word
from ._secret import FORMATS, parse_secret

__all__ = ["FileSecret"]

#: What the change check compares: st_dev, st_ino, st_mtime_ns, st_ctime_ns, st_size.
Signature = tuple[int, int, int, int, int]

#: How often a read that lost the race with a symlink swap is tried again.
READ_ATTEMPTS = 5
#: A credential file is small: a larger one is a wrong path.
MAX_SIZE = 64 * 1024

_UNSEEN: Any = object()


def _signature(st: os.stat_result) -> Signature:
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size)


class FileSecret(CredentialSource):
    """The password (and maybe the user name) in a file that an agent keeps current.

    - ``path``: the file (``str`` or path-like; made absolute when the source is made).
    - ``format``: ``"auto"`` (a JSON object, else the password itself), ``"text"``
      (the whole file is the password, one trailing newline stripped) or ``"json"``
      (a JSON object, nothing else).
    - ``username_key`` / ``password_key``: the keys of a JSON file. The user name,
      when present, wins over USER; without it USER is used.
    - ``refresh`` / ``clock``: as for every source.

    The file is read again when its stat changes (checked at each new connection)
    and after the server refused a login with its password.
    """

    issues_username = True
    _transient: ClassVar[tuple[str, ...]] = ("_seen",)
    #: The signature of the file behind the cached credential, and that credential
    #: (None after a failed read). Replaced whole: readers take no lock.
    _seen: tuple[Any, Credential | None]

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        format: str = "auto",
        username_key: str = "username",
        password_key: str = "password",
        refresh: RefreshPolicy | None = None,
        clock: Clock | None = None,
    ) -> None:
        name = type(self).__name__
        if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
            raise bad_argument(name, "path", "a non-empty str or path-like", path)
        fspath = os.fspath(path)
        if not isinstance(fspath, str) or "\0" in fspath:
            raise bad_argument(name, "path", "a non-empty str or path-like", path)
        self.path: str = os.path.abspath(fspath)
        if format not in FORMATS:
            raise bad_argument(name, "format", "'auto', 'text' or 'json'", format)
        self.format: str = format
        self.username_key = check_word(name, "username_key", username_key)
        self.password_key = check_word(name, "password_key", password_key)
        super().__init__(refresh=refresh, clock=clock)

    def describe(self) -> str:
        extra = "" if self.format == "auto" else f", format={self.format!r}"
        return f"FileSecret({self.path!r}{extra})"

    # -- the change check -------------------------------------------------------------

    @property
    def uses_cache(self) -> bool:
        # The backends' hot path answers from the cache slot without calling the source:
        # every new connection must come here for the stat check.
        return False

    def phase(self, target: Target | None = None) -> str:
        return self._cache.phase(self.cache_key(target or Target())).value

    def signature(self) -> Signature | None:
        """The stat of the file the path resolves to now; None if there is none."""
        try:
            return _signature(os.stat(self.path))
        except OSError:
            return None

    def get_credentials(
        self, target: Target | None = None, *, deadline: Deadline | None = None
    ) -> Credential:
        target = target or Target()
        seen, credential = self._seen
        if self.signature() != seen:
            # Changed since the last read (or appeared, or went): read it now, whatever
            # was cached or failed. Threads that saw the same change discard one credential.
            self._cache.discard(self.cache_key(target), credential)
        return super().get_credentials(target, deadline=deadline)

    # -- reading ----------------------------------------------------------------------

    def fetch(self, target: Target) -> Credential:
        where = f"database {target.alias!r}: {self.describe()}"
        try:
            data, signature = self._read(where)
        except IamdbError:
            self._seen = (self.signature(), None)
            raise
        outcome = self._parse(data, where, target)
        del data
        if isinstance(outcome, IamdbError):
            self._seen = (signature, None)
            raise outcome
        credential = outcome.replace(issued_at=self._clock.time())
        self._seen = (signature, credential)
        return credential

    def _read(self, where: str) -> tuple[bytes, Signature]:
        attempt = 0
        while True:
            attempt += 1
            # Resolved here, opened next: Kubernetes may remove the directory the link
            # pointed to in between (it swaps ..data, then deletes the old directory).
            resolved = os.path.realpath(self.path)
            try:
                with open(resolved, "rb") as handle:
                    signature = _signature(os.fstat(handle.fileno()))
                    data = handle.read(MAX_SIZE + 1)
            except FileNotFoundError as exc:
                if attempt < READ_ATTEMPTS and os.path.exists(self.path):
                    self._clock.sleep(0.002 * attempt)  # lost the race with a swap: again
                    continue
                shown = "" if resolved == self.path else f" (it resolves to {resolved!r})"
                raise CredentialError(
                    f"{where}: the file does not exist{shown}; check the path, and that the agent "
                    "that writes it (Vault Agent, the kubelet's secret volume, the CSI driver) runs "
                    "and has written it"
                ) from secret_free(exc)
            except IsADirectoryError as exc:
                raise ConfigurationError(
                    f"{where}: the path is a directory; set path to the file inside it"
                ) from secret_free(exc)
            except PermissionError as exc:
                raise CredentialError(
                    f"{where}: the file is not readable by this process (uid {os.geteuid()}); give "
                    "it a mode or owner that lets this process read it (Kubernetes: the volume's "
                    "defaultMode, or the pod's fsGroup)"
                ) from secret_free(exc)
            except OSError as exc:
                raise CredentialError(
                    f"{where}: the file could not be read: {describe(exc)}"
                ) from secret_free(exc)
            return data, signature

    def _parse(self, data: bytes, where: str, target: Target) -> Credential | IamdbError:
        """The credential in the file's bytes, or the error to raise (returned, so that the
        secret leaves with this frame)."""
        if len(data) > MAX_SIZE:
            return ConfigurationError(
                f"{where}: the file is larger than {MAX_SIZE // 1024} KiB: not a credential file; "
                "check the path"
            )
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            return ConfigurationError(f"{where}: the file is not UTF-8 text; check the path")
        if text.endswith("\n"):
            text = text[:-2] if text.endswith("\r\n") else text[:-1]
        if not text.strip():
            return CredentialError(
                f"{where}: the file is empty; check that the agent that writes it has the secret "
                "(a Vault Agent template that rendered nothing, a Kubernetes secret without that key)"
            )
        return parse_secret(
            text,
            where=where,
            username_key=self.username_key,
            password_key=self.password_key,
            user_given=bool(target.user),
            format=self.format,
            what="file",
        )

    def _new_transient_state(self) -> None:
        super()._new_transient_state()
        if not hasattr(self, "_seen"):  # made or unpickled (a forked child keeps its cache and this)
            self._seen = (_UNSEEN, None)
