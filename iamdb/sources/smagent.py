"""The AWS Secrets Manager Agent (or the Lambda extension): a local HTTP cache of
Secrets Manager, one per host, that serves every process.

``GET {endpoint}/secretsmanager/get?secretId=...`` with the header
``X-Aws-Parameters-Secrets-Token`` (the agent's protection against server-side
request forgery) answers what GetSecretValue returns. The agent caches each secret
(300 s by default) and does not notice a rotation: after a refused login this
source asks it with ``refreshNow=true``, which makes it call Secrets Manager.
The stdlib's ``urllib`` does the request: no SDK, no extra.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, ClassVar

from ..clock import Clock
from ..credentials import CredentialSource
from ..deadline import timeout_for
from ..engine import RefreshPolicy
from ..errors import ConfigurationError, CredentialError, IamdbError, secret_free
from ..values import Credential, Target
from ._args import bad_argument, check_seconds, check_word
from ._secret import parse_secret_value

__all__ = ["SecretsManagerAgentSecret"]

#: Where the agent's token is looked for, first found wins (as the agent documents).
TOKEN_VARIABLES = ("AWS_TOKEN", "AWS_SESSION_TOKEN", "AWS_CONTAINER_AUTHORIZATION_TOKEN")
TOKEN_HEADER = "X-Aws-Parameters-Secrets-Token"
#: The timeout of a request made with no caller waiting (a background refresh).
CALL_TIMEOUT = 5.0
#: A response larger than this is not the agent's.
MAX_RESPONSE = 1024 * 1024


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect would carry the token header to another address: refused."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


# The agent is on this host: never through an HTTP proxy from the environment, which
# would see the token.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())


class SecretsManagerAgentSecret(CredentialSource):
    """The user name and password in a Secrets Manager secret, read through the agent.

    - ``secret_id``: the secret's name or ARN.
    - ``endpoint``: the agent's address (``http://localhost:2773``).
    - ``username_key`` / ``password_key``: as for ``SecretsManagerSecret``.
    - ``ttl`` (seconds, 60): how long a value is used before the agent is asked
      again (the agent answers from its own cache: no Secrets Manager call).
    - ``refresh`` / ``clock``: as for every source.
    """

    issues_username = True
    _transient: ClassVar[tuple[str, ...]] = ("_refresh_now",)
    #: Whether the next request asks the agent to bypass its cache (after a refusal).
    _refresh_now: bool

    def __init__(
        self,
        secret_id: str,
        *,
        endpoint: str = "http://localhost:2773",
        username_key: str = "username",
        password_key: str = "password",
        ttl: float = 60.0,
        refresh: RefreshPolicy | None = None,
        clock: Clock | None = None,
    ) -> None:
        name = type(self).__name__
        self.secret_id = check_word(name, "secret_id", secret_id)
        parsed = urllib.parse.urlsplit(endpoint) if isinstance(endpoint, str) else None
        if (
            parsed is None
            or parsed.scheme not in ("http", "https")
            or not parsed.hostname
            or parsed.query
            or parsed.fragment
            or parsed.username is not None
        ):
            raise bad_argument(name, "endpoint", "an http(s) URL such as 'http://localhost:2773'", endpoint)
        self.endpoint: str = endpoint.rstrip("/")
        self.username_key = check_word(name, "username_key", username_key)
        self.password_key = check_word(name, "password_key", password_key)
        self.ttl = check_seconds(name, "ttl", ttl)
        super().__init__(refresh=refresh, clock=clock)

    def describe(self) -> str:
        return f"SecretsManagerAgentSecret({self.secret_id!r}, endpoint={self.endpoint!r})"

    # -- fetching -------------------------------------------------------------------------

    def fetch(self, target: Target) -> Credential:
        where = f"database {target.alias!r}: {self.describe()}"
        now = self._clock.time()
        refresh_now, self._refresh_now = self._refresh_now, False
        try:
            body = self._get(where, refresh_now)
        except IamdbError:
            if refresh_now:
                self._refresh_now = True  # still owed to the refused login
            raise
        outcome = self._parse(body, where, target)
        del body
        if isinstance(outcome, IamdbError):
            raise outcome
        return outcome.replace(refresh_after=now + self.ttl, issued_at=now)

    def url(self, refresh_now: bool = False) -> str:
        """The request's URL (no secret in it)."""
        query = {"secretId": self.secret_id}
        if refresh_now:
            query["refreshNow"] = "true"
        return f"{self.endpoint}/secretsmanager/get?{urllib.parse.urlencode(query)}"

    def _get(self, where: str, refresh_now: bool) -> bytes:
        """The agent's response body. Raised from this frame once the token has left it."""
        request = urllib.request.Request(self.url(refresh_now))
        outcome = self._token(where)
        if isinstance(outcome, IamdbError):
            raise outcome
        request.add_header(TOKEN_HEADER, outcome)
        del outcome
        timeout = timeout_for(CALL_TIMEOUT)
        error: IamdbError
        try:
            with _opener.open(request, timeout=timeout) as response:
                return bytes(response.read(MAX_RESPONSE + 1))
        except urllib.error.HTTPError as exc:
            error = self._http_error(where, exc)
            cause: BaseException = exc
        except (urllib.error.URLError, OSError) as exc:  # refused, reset, timed out
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            error = CredentialError(
                f"{where}: could not reach the agent ({type(reason).__name__}: {reason}; timeout "
                f"{timeout:.2g} s); check that the Secrets Manager Agent runs and listens there"
            )
            cause = exc
        finally:
            del request  # it holds the token
        raise error from secret_free(cause)

    def _http_error(self, where: str, exc: urllib.error.HTTPError) -> IamdbError:
        code = exc.code
        detail = ""
        try:
            data = json.loads(exc.read(64 * 1024) or b"null")
        except (ValueError, OSError):
            data = None
        if isinstance(data, dict):
            kind = data.get("__type") or data.get("Code") or data.get("code")
            message = data.get("message") or data.get("Message")
            parts = [str(p)[:200] for p in (kind, message) if isinstance(p, str) and p]
            detail = (": " + ": ".join(parts)) if parts else ""
        if code in (401, 403):
            return ConfigurationError(
                f"{where}: the agent refused the request (HTTP {code}{detail}): set "
                f"{TOKEN_VARIABLES[0]} (or {', '.join(TOKEN_VARIABLES[1:])}) to the agent's token, "
                "or to file://PATH of the file that holds it"
            )
        hint = "check the secret's name and the agent's IAM permissions (secretsmanager:GetSecretValue)"
        if 300 <= code < 400:
            hint = "the agent does not redirect: check endpoint"
        return CredentialError(f"{where}: the agent answered HTTP {code}{detail}; {hint}")

    def _token(self, where: str) -> str | IamdbError:
        """The agent's token, from the first variable set; ``file://PATH`` is read."""
        for variable in TOKEN_VARIABLES:
            value = os.environ.get(variable)
            if not value:
                continue
            if not value.startswith("file://"):
                return value.strip()
            path = value[len("file://") :]
            try:
                with open(path, encoding="utf-8") as handle:
                    token = handle.read().strip()
            except (OSError, UnicodeDecodeError) as exc:
                error = CredentialError(
                    f"{where}: {variable} names the token file {path!r}, which could not be read "
                    f"({type(exc).__name__}); check the path and its permissions"
                )
                error.__cause__ = secret_free(exc)
                return error
            if not token:
                return CredentialError(f"{where}: the token file {path!r} named by {variable} is empty")
            return token
        return ConfigurationError(
            f"{where}: no token for the agent: set {TOKEN_VARIABLES[0]} (or "
            f"{', '.join(TOKEN_VARIABLES[1:])}) to the agent's token, or to file://PATH of the "
            "file that holds it (the agent checks it in the X-Aws-Parameters-Secrets-Token header)"
        )

    def _parse(self, body: bytes, where: str, target: Target) -> Credential | IamdbError:
        """The credential in the agent's response, or the error to raise (returned, so that
        the secret leaves with this frame)."""
        if len(body) > MAX_RESPONSE:
            return CredentialError(
                f"{where}: the answer is larger than 1 MiB: not the agent's; check endpoint"
            )
        try:
            response = json.loads(body)
        except ValueError:
            response = None
        if not isinstance(response, dict):
            return CredentialError(
                f"{where}: the answer is not the agent's JSON (GetSecretValue's response); check endpoint"
            )
        return parse_secret_value(
            response,
            where=where,
            username_key=self.username_key,
            password_key=self.password_key,
            user_given=bool(target.user),
        )

    # -- refused logins -----------------------------------------------------------------

    def invalidate(self, target: Target | None = None, *, password: str | None = None) -> None:
        # The agent would answer the refused password from its cache: the next request
        # asks it to call Secrets Manager (once, however many connections were refused).
        if password is not None:
            cached = self.cached(target)
            if cached is None or cached.password == password:
                self._refresh_now = True
        super().invalidate(target, password=password)

    def _new_transient_state(self) -> None:
        super()._new_transient_state()
        self._refresh_now = False
