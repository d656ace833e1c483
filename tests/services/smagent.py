"""A stand-in for the AWS Secrets Manager Agent's HTTP API, in front of moto's real server.

What iamdb relies on, as the agent does it:

- ``GET /secretsmanager/get?secretId=...[&versionStage=...][&versionId=...][&refreshNow=true]``
  answers GetSecretValue's response as JSON (``ARN``, ``Name``, ``VersionId``,
  ``SecretString``, ``VersionStages``, ``CreatedDate``);
- the request must carry the header ``X-Aws-Parameters-Secrets-Token`` with the agent's
  token (its protection against server-side request forgery): 401 without it, 403 with
  another value;
- each answer is cached for ``ttl`` seconds (300, the agent's default) and a rotation
  is not noticed meanwhile; ``refreshNow=true`` skips the cache and calls Secrets Manager;
- an error of Secrets Manager is passed on with its status (400 for
  ResourceNotFoundException) and ``{"__type": ..., "message": ...}``.

The upstream calls go to moto through a real boto3 client, counted in ``upstream_calls``.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import botocore.exceptions

from tests.services.moto import MotoServer

HEADER = "X-Aws-Parameters-Secrets-Token"


class SecretsManagerAgent:
    def __init__(self, moto: MotoServer, *, ttl: float = 300.0) -> None:
        self.token = "agent-token-" + secrets.token_hex(16)
        self.ttl = ttl
        self._upstream = moto.admin_client()  # its calls log nothing (see MotoServer.admin_client)
        self._cache: dict[tuple[str, str, str], tuple[float, bytes]] = {}
        self._lock = threading.Lock()
        self.upstream_calls = 0
        #: (query, status) of every request, oldest first.
        self.requests: list[tuple[dict[str, str], int]] = []
        agent = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                status, body = agent._answer(self.path, self.headers.get(HEADER))
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def start(self) -> SecretsManagerAgent:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(5)

    def refreshes(self, secret_id: str) -> int:
        """How many requests for ``secret_id`` asked for refreshNow."""
        return sum(1 for q, _ in self.requests if q.get("secretId") == secret_id and q.get("refreshNow"))

    def _answer(self, path: str, token: str | None) -> tuple[int, bytes]:
        parts = urllib.parse.urlsplit(path)
        query = dict(urllib.parse.parse_qsl(parts.query))
        status, body = self._respond(parts.path, query, token)
        with self._lock:
            self.requests.append((query, status))
        return status, body

    def _respond(self, path: str, query: dict[str, str], token: str | None) -> tuple[int, bytes]:
        if token is None:
            return 401, _error("UnauthorizedException", "missing X-Aws-Parameters-Secrets-Token")
        if token != self.token:
            return 403, _error("AccessDeniedException", "bad X-Aws-Parameters-Secrets-Token")
        if path != "/secretsmanager/get" or not query.get("secretId"):
            return 400, _error("InvalidRequestException", "expected /secretsmanager/get?secretId=")
        key = (query["secretId"], query.get("versionStage", ""), query.get("versionId", ""))
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(key)
        if cached is not None and query.get("refreshNow") != "true" and now - cached[0] < self.ttl:
            return 200, cached[1]
        kwargs = {"SecretId": key[0]}
        if key[1]:
            kwargs["VersionStage"] = key[1]
        if key[2]:
            kwargs["VersionId"] = key[2]
        try:
            with self._lock:
                self.upstream_calls += 1
            response = self._upstream.get_secret_value(**kwargs)
        except botocore.exceptions.ClientError as exc:
            error = exc.response.get("Error", {})
            # Secrets Manager answers a client error with 400 (moto says 404 for a missing secret).
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 400)
            status = 400 if status < 500 else status
            return status, _error(str(error.get("Code")), str(error.get("Message")))
        answer = {
            name: response[name]
            for name in ("ARN", "Name", "VersionId", "SecretString", "VersionStages")
            if name in response
        }
        answer["CreatedDate"] = response["CreatedDate"].timestamp()
        body = json.dumps(answer).encode()
        with self._lock:
            self._cache[key] = (now, body)
        return 200, body


def _error(kind: str, message: str) -> bytes:
    return json.dumps({"__type": kind, "message": message}).encode()
