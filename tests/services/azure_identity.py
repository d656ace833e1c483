"""A stand-in for Azure's managed-identity endpoint (the App Service protocol), issuing
short-lived emulated tokens.

azure-identity finds it through its own settings: ``IDENTITY_ENDPOINT`` and
``IDENTITY_HEADER`` (read when a credential is made). A token request is
``GET IDENTITY_ENDPOINT?api-version=2019-08-01&resource=<resource>`` with the header
``X-IDENTITY-HEADER``; the answer has ``access_token``, ``expires_on`` (epoch seconds, as
a string), ``resource`` and ``token_type``. Tokens are those of
:mod:`tests.services.token_checker`, issued to :attr:`AzureIdentity.principal`.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.services.token_checker import mint

ISSUER = "entra"
PATH = "/msi/token"


class AzureIdentity:
    def __init__(self) -> None:
        self.principal = f"mi-{secrets.token_hex(3)}"
        self.key = secrets.token_urlsafe(24)
        self.header = secrets.token_hex(16)
        #: Seconds a token lives.
        self.lifetime = 3600
        #: Resources asked for, one entry per token request.
        self.resources_asked: list[str] = []
        self.fail_with: int | None = None
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])

    @property
    def tokens_issued(self) -> int:
        return len(self.resources_asked)

    def environ(self) -> dict[str, str]:
        return {"IDENTITY_ENDPOINT": f"http://127.0.0.1:{self.port}{PATH}", "IDENTITY_HEADER": self.header}

    def start(self) -> AzureIdentity:
        threading.Thread(target=self._server.serve_forever, name="azure-identity", daemon=True).start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _send(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                query = dict(urllib.parse.parse_qsl(url.query))
                if url.path != PATH or self.headers.get("X-IDENTITY-HEADER") != stand_in.header:
                    self._send(400, {"error": "invalid_request", "error_description": "bad path or header"})
                    return
                resource = query.get("resource", "")
                if stand_in.fail_with is not None:
                    self._send(
                        stand_in.fail_with, {"error": "emulated", "error_description": "emulated failure"}
                    )
                    return
                with stand_in._lock:
                    stand_in.resources_asked.append(resource)
                    lifetime = int(stand_in.lifetime)
                expiry = int(time.time()) + lifetime
                self._send(
                    200,
                    {
                        "access_token": mint(stand_in.key, ISSUER, stand_in.principal, expiry),
                        "expires_on": str(expiry),
                        "resource": resource,
                        "token_type": "Bearer",
                    },
                )

        return Handler
