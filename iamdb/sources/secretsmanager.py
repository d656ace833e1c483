"""AWS Secrets Manager: a database secret (RDS-style JSON or a plain password), re-read on a timer
and after a refused login, so that rotation does not fail requests."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
from collections import deque
from typing import Any

from ..credentials import Credential, Target
from ..engine import Clock, RefreshPolicy
from ..errors import ConfigurationError, CredentialError
from . import _aws

logger = logging.getLogger("iamdb")

_ARN_REGION = re.compile(r"^arn:aws[a-z-]*:secretsmanager:(?P<region>[a-z0-9-]+):")

#: Stages that Secrets Manager manages.
CURRENT, PENDING = "AWSCURRENT", "AWSPENDING"
#: How long a password taken from AWSPENDING is used before AWSCURRENT is read again.
PENDING_TTL = 10.0
#: How long a refused password is remembered (to decide whether to look at AWSPENDING).
REFUSED_MEMORY = 120.0


def region_from_arn(secret_id: str) -> str | None:
    match = _ARN_REGION.match(secret_id)
    return match.group("region") if match else None


def _digest(password: str) -> bytes:
    return hashlib.sha256(password.encode()).digest()


class SecretsManagerSecret(_aws.AwsSource):
    """The user name and password in a Secrets Manager secret.

    - ``secret_id``: the secret's name or ARN.
    - ``region``: by default the one in an ARN, else boto3's configured region.
    - ``version_stage``: the staging label read (``"AWSCURRENT"``).
    - ``username_key`` / ``password_key``: the keys of a JSON secret (RDS's
      format: ``{"username": ..., "password": ..., "host": ...}``). A secret that
      is not a JSON object is the password itself, used with USER.
    - ``ttl`` (seconds): how long a value is used before it is read again (in
      the background of a request, refresh-ahead). A refused login reads it at
      once, whatever the ttl.
    - ``session``: a ``boto3.Session``; by default boto3's default chain. The
      endpoint comes from boto3's configuration (``AWS_ENDPOINT_URL_SECRETS_MANAGER``).

    AWSPENDING: when the server refuses the password in AWSCURRENT and the secret
    has an AWSPENDING version with another password (a rotation between its
    ``setSecret`` and ``finishSecret`` steps), that password is used for
    ``PENDING_TTL`` seconds, then AWSCURRENT is read again. It is never used
    while AWSCURRENT works.
    """

    issues_username = True
    _transient = ("_refused", "_refused_lock")

    def __init__(
        self,
        secret_id: str,
        *,
        region: str | None = None,
        version_stage: str = CURRENT,
        username_key: str = "username",
        password_key: str = "password",
        ttl: float = 300.0,
        session: Any = None,
        refresh: RefreshPolicy | None = None,
        clock: Clock | None = None,
    ) -> None:
        if not isinstance(secret_id, str) or not secret_id:
            raise ConfigurationError("SecretsManagerSecret: secret_id must be a non-empty str")
        if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or ttl <= 0:
            raise ConfigurationError("SecretsManagerSecret: ttl must be a number of seconds > 0")
        self.secret_id = secret_id
        self.region = region
        self.version_stage = version_stage
        self.username_key = username_key
        self.password_key = password_key
        self.ttl = float(ttl)
        self._set_session(session)
        super().__init__(refresh=refresh, clock=clock)

    def describe(self) -> str:
        extra = "" if self.version_stage == CURRENT else f", version_stage={self.version_stage!r}"
        return f"SecretsManagerSecret({self.secret_id!r}{extra})"

    def region_for(self, target: Target) -> str:
        region = self.region or region_from_arn(self.secret_id) or _aws.default_region(self._session)
        if not region:
            raise ConfigurationError(
                f"database {target.alias!r}: {self.describe()} cannot tell the AWS region: pass region=, "
                "use the secret's ARN, or configure boto3's region (AWS_DEFAULT_REGION or the profile's)"
            )
        return region

    def check_target(self, target: Target) -> None:
        self.region_for(target)

    # -- fetching ---------------------------------------------------------------------

    def fetch(self, target: Target) -> Credential:
        now = self._clock()
        current = self._get(target, self.version_stage)
        assert current is not None
        credential = self._parse(current, target, self.version_stage)
        refresh_after = now + self.ttl
        if self.version_stage == CURRENT and self._was_refused(credential.password):
            pending = self._get(target, PENDING, missing_ok=True)
            if pending is not None:
                candidate = self._parse(pending, target, PENDING)
                if candidate.password != credential.password and not self._was_refused(candidate.password):
                    logger.info(
                        "iamdb: database %r: %s: AWSCURRENT refused; using AWSPENDING (rotation underway)",
                        target.alias,
                        self.describe(),
                    )
                    credential = candidate
                    refresh_after = now + min(self.ttl, PENDING_TTL)
        return credential.replace(refresh_after=refresh_after, issued_at=now)

    def _get(self, target: Target, stage: str, *, missing_ok: bool = False) -> dict[str, Any] | None:
        region = self.region_for(target)
        try:
            client = _aws.client("secretsmanager", region, self._session)
            with _aws.redacted_logging():
                response: dict[str, Any] = client.get_secret_value(
                    SecretId=self.secret_id, VersionStage=stage
                )
        except Exception as exc:
            if missing_ok and _aws.error_code(exc) == "ResourceNotFoundException":
                return None
            raise CredentialError(
                f"database {target.alias!r}: {self.describe()} could not read the secret "
                f"(stage {stage}, region {region}): {_aws.describe_aws_error(exc)}"
            ) from None
        return response

    def _parse(self, response: dict[str, Any], target: Target, stage: str) -> Credential:
        where = f"database {target.alias!r}: {self.describe()} (stage {stage})"
        text = response.get("SecretString")
        if not isinstance(text, str):
            raise ConfigurationError(
                f"{where}: the secret has no SecretString (binary secrets are not supported)"
            )
        try:
            data = json.loads(text)
        except ValueError:
            data = None
        username: str | None = None
        if isinstance(data, dict):
            password = data.get(self.password_key)
            if not isinstance(password, str) or not password:
                keys = ", ".join(sorted(str(k) for k in data)) or "none"
                raise ConfigurationError(
                    f"{where}: the JSON secret has no non-empty string {self.password_key!r} key "
                    f"(its keys: {keys}); set password_key="
                )
            value = data.get(self.username_key)
            username = value if isinstance(value, str) and value else None
        else:
            password = text
        if not password:
            raise ConfigurationError(f"{where}: the secret is empty")
        if username is None and not target.user:
            raise ConfigurationError(
                f"{where}: USER is empty and the secret has no {self.username_key!r} key"
            )
        return Credential(password=password, username=username)

    # -- refused logins -----------------------------------------------------------------

    def invalidate(self, target: Target | None = None, *, password: str | None = None) -> None:
        # Remember what the server refused: the next fetch then looks at AWSPENDING too.
        # (The cache spaces the re-fetches that many refused connections cause.)
        if password is not None:
            with self._refused_lock:
                self._refused.append((_digest(password), self._clock()))
        super().invalidate(target, password=password)

    def _was_refused(self, password: str) -> bool:
        digest, since = _digest(password), self._clock() - REFUSED_MEMORY
        with self._refused_lock:
            return any(d == digest and at > since for d, at in self._refused)

    def _new_transient_state(self) -> None:
        self._refused: deque[tuple[bytes, float]] = deque(maxlen=8)
        self._refused_lock = threading.Lock()
        super()._new_transient_state()
