#!/usr/bin/python3
"""Checks an RDS IAM or Aurora DSQL token the way AWS does, for pam_exec (stdlib only).

Run by ``pam_exec.so expose_authtok`` as the database server's user: the token
arrives on stdin (NUL-terminated), the user name in ``PAM_USER``. The one
argument is a JSON file, re-read on every login so that tests can change it:

    {"keys": {"<access key id>": "<secret key>"}, "hosts": ["host:port", ...],
     "dsql_hosts": ["<id>.dsql.<region>.on.aws", ...], "region": "us-east-1", "max_age": 900}

An RDS token is ``host:port/?Action=connect&DBUser=...&X-Amz-...``: a SigV4
presigned GET for the service ``rds-db``, valid 900 s. An Aurora DSQL token is
``host/?Action=DbConnect&X-Amz-...`` (``DbConnectAdmin`` for the role ``admin``
only): no port and no user inside, service ``dsql``, valid for its own
X-Amz-Expires (at most 604800 s). Both are refused once older than ``max_age``.
Exit 0 accepts the login; anything else refuses it, with the reason on stderr
(the server's log).
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import json
import os
import sys
import time
import urllib.parse
from typing import Any, NoReturn

# The payload hash of the empty body that a presigned GET carries.
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


def refuse(reason: str) -> NoReturn:
    sys.stderr.write(f"iamdb sigv4 checker: refused: {reason}\n")
    sys.exit(1)


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def signature(secret: str, date: str, region: str, service: str, string_to_sign: str) -> str:
    key = _hmac(("AWS4" + secret).encode(), date)
    key = _hmac(key, region)
    key = _hmac(key, service)
    key = _hmac(key, "aws4_request")
    return hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()


#: The longest X-Amz-Expires each service honours.
MAX_EXPIRES = {"rds-db": 900, "dsql": 604800}
DSQL_ACTIONS = ("DbConnect", "DbConnectAdmin")


def check(token: str, user: str, config: dict[str, Any], now: float) -> None:
    host, sep, query = token.partition("/?")
    if not sep:
        refuse("not a token")
    pairs = urllib.parse.parse_qsl(query, keep_blank_values=True, strict_parsing=True)
    params = dict(pairs)
    if len(params) != len(pairs):
        refuse("repeated parameter")
    if params.get("Action") in DSQL_ACTIONS:
        check_dsql(host, params, user, config)
        service = "dsql"
    else:
        check_rds(host, params, user, config)
        service = "rds-db"
    check_signature(host, pairs, params, service, config, now)


def check_rds(host: str, params: dict[str, str], user: str, config: dict[str, Any]) -> None:
    if host not in config["hosts"]:
        refuse("signed for another endpoint")
    if params.get("Action") != "connect":
        refuse("not an rds-db connect token")
    if params.get("DBUser") != user:
        refuse("signed for another user")


def check_dsql(host: str, params: dict[str, str], user: str, config: dict[str, Any]) -> None:
    if ":" in host or "DBUser" in params:
        refuse("a DSQL token names no port and no user")
    if host.lower() not in [name.lower() for name in config.get("dsql_hosts", [])]:
        refuse("signed for another cluster endpoint")
    if (params["Action"] == "DbConnectAdmin") != (user == "admin"):
        refuse("DbConnectAdmin is for the role admin only, DbConnect for every other role")


def check_signature(
    host: str,
    pairs: list[tuple[str, str]],
    params: dict[str, str],
    service: str,
    config: dict[str, Any],
    now: float,
) -> None:
    if params.get("X-Amz-Algorithm") != "AWS4-HMAC-SHA256":
        refuse("not a SigV4 token")
    if params.get("X-Amz-SignedHeaders") != "host":
        refuse("unexpected signed headers")
    try:
        key_id, date, region, scope_service, terminal = params["X-Amz-Credential"].split("/")
        signed_at = datetime.datetime.strptime(params["X-Amz-Date"], "%Y%m%dT%H%M%SZ")
        expires = int(params["X-Amz-Expires"])
        given = params["X-Amz-Signature"]
    except (KeyError, ValueError):
        refuse("malformed token")
    if scope_service != service or terminal != "aws4_request" or region != config["region"]:
        refuse("wrong credential scope")
    if date != params["X-Amz-Date"][:8]:
        refuse("scope date differs from X-Amz-Date")
    if expires <= 0 or (service == "dsql" and expires > MAX_EXPIRES[service]):
        refuse("X-Amz-Expires out of range")
    secret = config["keys"].get(key_id)
    if secret is None:
        refuse("unknown access key")
    signed = signed_at.replace(tzinfo=datetime.timezone.utc).timestamp()
    if signed > now + 5:
        refuse("signed in the future")
    if now > signed + min(expires, MAX_EXPIRES[service], config.get("max_age", 900)):
        refuse("expired")
    canonical_query = "&".join(
        f"{urllib.parse.quote(k, safe='-_.~')}={urllib.parse.quote(v, safe='-_.~')}"
        for k, v in sorted(pairs)
        if k != "X-Amz-Signature"
    )
    canonical_request = "\n".join(["GET", "/", canonical_query, "host:" + host, "", "host", EMPTY_SHA256])
    scope = "/".join([date, region, service, terminal])
    string_to_sign = "\n".join(
        [
            "AWS4-HMAC-SHA256",
            params["X-Amz-Date"],
            scope,
            hashlib.sha256(canonical_request.encode()).hexdigest(),
        ]
    )
    expected = signature(secret, date, region, service, string_to_sign)
    if not hmac.compare_digest(expected, given):
        refuse("bad signature")


def main() -> None:
    with open(sys.argv[1]) as fh:
        config = json.load(fh)
    token = sys.stdin.buffer.read().split(b"\0", 1)[0].decode("utf-8", "replace").strip()
    check(token, os.environ.get("PAM_USER", ""), config, time.time())
    sys.exit(0)


if __name__ == "__main__":
    main()
