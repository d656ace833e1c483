#!/usr/bin/python3
"""Checks an emulated OAuth access token at login, for pam_exec (stdlib only).

The token stand-ins (:mod:`tests.services.gce_metadata`, :mod:`tests.services.azure_identity`)
issue short HMAC-signed tokens instead of real ones (a real Google or Entra token can be far
longer than the 512 bytes of password pam_exec passes on; these are under 100):

    <issuer>~<expiry, epoch seconds>~<nonce>~<signature>

where the signature is HMAC-SHA256 (urlsafe base64, unpadded) with the issuer's key over
``<issuer>~<expiry>~<nonce>~<principal>``: a token names the identity it was issued to.
Run by ``pam_exec.so expose_authtok`` as the database server's user: the token arrives on stdin
(NUL-terminated), the database user in ``PAM_USER``. The one argument is a JSON file, re-read on
every login so that tests can change it:

    {"keys": {"<issuer>": "<key>"}, "users": {"<database user>": ["<issuer>", "<principal>"]}}

Exit 0 accepts the login; anything else refuses it, with the reason on stderr.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import sys
import time
from typing import Any, NoReturn


def signature(key: str, issuer: str, expiry: int, nonce: str, principal: str) -> str:
    message = f"{issuer}~{expiry}~{nonce}~{principal}".encode()
    digest = hmac.new(key.encode(), message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def mint(key: str, issuer: str, principal: str, expiry: int) -> str:
    """A token of ``issuer`` for ``principal``, ending at ``expiry`` (epoch seconds)."""
    nonce = secrets.token_urlsafe(9)
    return f"{issuer}~{expiry}~{nonce}~{signature(key, issuer, expiry, nonce, principal)}"


def refuse(reason: str) -> NoReturn:
    sys.stderr.write(f"iamdb token checker: refused: {reason}\n")
    sys.exit(1)


def check(token: str, user: str, config: dict[str, Any], now: float) -> None:
    parts = token.split("~")
    if len(parts) != 4:
        refuse("not a token")
    issuer, expiry_text, nonce, given = parts
    entry = config["users"].get(user)
    if entry is None:
        refuse("not a token user")
    expected_issuer, principal = entry
    if issuer != expected_issuer:
        refuse("issued by another issuer")
    key = config["keys"].get(issuer)
    if key is None or not expiry_text.isdigit():
        refuse("unknown issuer or malformed token")
    expiry = int(expiry_text)
    if not hmac.compare_digest(signature(key, issuer, expiry, nonce, principal), given):
        refuse("bad signature (another identity, or not issued by the stand-in)")
    if now >= expiry:
        refuse(f"expired {now - expiry:.1f} s ago")


def main() -> None:
    data = sys.stdin.buffer.read(4096).split(b"\0", 1)[0]
    with open(sys.argv[1]) as fh:
        config = json.load(fh)
    check(data.decode("ascii", "replace"), os.environ.get("PAM_USER", ""), config, time.time())
    sys.exit(0)


if __name__ == "__main__":
    main()
