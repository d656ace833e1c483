"""AWS Secrets Manager: a database secret (RDS-style JSON or a plain password), re-read on a timer
and after a refused login, so that rotation does not fail requests."""

from __future__ import annotations

import hashlib
import logging
import re
from typing import Any, ClassVar

from ..clock import Clock
from ..deadline import timeout_for
from ..engine import RefreshPolicy
from ..errors import ConfigurationError, CredentialError, secret_free
from ..values import Credential, Target
from . import _args, _aws
from ._secret import parse_secret_value

logger = logging.getLogger("iamdb")

_ARN_REGION = re.compile(r"^arn:aws[a-z-]*:secretsmanager:(?P<region>[a-z0-9-]+):")

#: Stages that Secrets Manager manages.
CURRENT, PENDING = "AWSCURRENT", "AWSPENDING"
#: How long a password taken from AWSPENDING is used before AWSCURRENT is read again.
PENDING_TTL = 10.0
#: How long a refused password is remembered (to decide whether to look at AWSPENDING).
REFUSED_MEMORY = 120.0
#: How many refused passwords are remembered.
_REFUSED_KEPT = 8


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
    _transient: ClassVar[tuple[str, ...]] = ("_refused",)
    #: (digest of a refused password, when on the monotonic clock), newest last.
    _refused: tuple[tuple[bytes, float], ...]

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
        name = type(self).__name__
        self.secret_id: str = _args.check_word(name, "secret_id", secret_id) or ""
        self.region = _args.check_region(name, region)
        in_arn = region_from_arn(self.secret_id)
        if self.region and in_arn and self.region != in_arn:
            raise _args.bad_argument(name, "region", f"None or the ARN's region {in_arn!r}", region)
        self.version_stage: str = _args.check_word(name, "version_stage", version_stage) or ""
        self.username_key: str = _args.check_word(name, "username_key", username_key) or ""
        self.password_key: str = _args.check_word(name, "password_key", password_key) or ""
        self.ttl = _args.check_seconds(name, "ttl", ttl)
        self._set_session(session)
        super().__init__(refresh=refresh, clock=clock)

    def describe(self) -> str:
        extra = "" if self.version_stage == CURRENT else f", version_stage={self.version_stage!r}"
        return f"SecretsManagerSecret({self.secret_id!r}{extra})"

    def region_for(self, target: Target) -> str:
        region = self.region or region_from_arn(self.secret_id) or _aws.default_region(self.aws_session())
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
        now = self._clock.time()
        credential = self._read(target, self.version_stage)
        assert credential is not None
        refresh_after = now + self.ttl
        if self.version_stage == CURRENT and self._was_refused(credential.password):
            candidate = self._read(target, PENDING, missing_ok=True)
            if (
                candidate is not None
                and candidate.password != credential.password
                and not self._was_refused(candidate.password)
            ):
                logger.info(
                    "iamdb: database %r: %s: AWSCURRENT refused; using AWSPENDING (rotation underway)",
                    target.alias,
                    self.describe(),
                )
                credential = candidate
                refresh_after = now + min(self.ttl, PENDING_TTL)
        return credential.replace(refresh_after=refresh_after, issued_at=now)

    def _read(self, target: Target, stage: str, *, missing_ok: bool = False) -> Credential | None:
        """The credential in ``stage``; None if it is missing and ``missing_ok``.

        An error is raised from this frame after the secret has left it: no frame
        beneath the error (which Django's debug page shows) holds the secret.
        """
        response = self._get(target, stage, missing_ok=missing_ok)
        if response is None:
            return None
        outcome = self._parse(response, target, stage)
        del response
        if isinstance(outcome, ConfigurationError):
            raise outcome
        return outcome

    def _get(self, target: Target, stage: str, *, missing_ok: bool) -> dict[str, Any] | None:
        region = self.region_for(target)
        try:
            client = _aws.client(
                "secretsmanager", region, self.aws_session(), budget=timeout_for(_aws.CALL_TIMEOUT)
            )
            with _aws.redacted_logging():
                response: dict[str, Any] = client.get_secret_value(
                    SecretId=self.secret_id, VersionStage=stage
                )
        except _aws.SDK_ERRORS as exc:
            if missing_ok and _aws.error_code(exc) == "ResourceNotFoundException":
                return None
            raise CredentialError(
                f"database {target.alias!r}: {self.describe()} could not read the secret "
                f"(stage {stage}, region {region}): {_aws.describe_aws_error(exc)}"
            ) from secret_free(exc)
        return response

    def _parse(self, response: dict[str, Any], target: Target, stage: str) -> Credential | ConfigurationError:
        """The credential in a GetSecretValue response, or the error to raise (returned,
        not raised, so that this frame's locals, which hold the secret, go with it)."""
        where = f"database {target.alias!r}: {self.describe()} (stage {stage})"
        return parse_secret_value(
            response,
            where=where,
            username_key=self.username_key,
            password_key=self.password_key,
            user_given=bool(target.user),
        )

    # -- refused logins -----------------------------------------------------------------

    def invalidate(self, target: Target | None = None, *, password: str | None = None) -> None:
        # Remember what the server refused: the next fetch then looks at AWSPENDING too.
        # (The cache spaces the re-fetches that many refused connections cause.)
        if password is not None:
            # An immutable tuple, replaced whole: readers and writers take no lock. Two
            # refusals recorded at the same instant may keep only one (the next refusal
            # records it again).
            entry = (_digest(password), self._clock.monotonic())
            self._refused = (*self._refused[-(_REFUSED_KEPT - 1) :], entry)
        super().invalidate(target, password=password)

    def _was_refused(self, password: str) -> bool:
        digest, since = _digest(password), self._clock.monotonic() - REFUSED_MEMORY
        return any(d == digest and at > since for d, at in self._refused)

    def _new_transient_state(self) -> None:
        self._refused = ()
        super()._new_transient_state()
