"""A stand-in for the Compute Engine metadata server, issuing short-lived emulated tokens.

google-auth finds it through its own settings: ``GCE_METADATA_HOST`` (the metadata
root) and ``GCE_METADATA_IP`` (its "am I on GCE" ping), both read once, when
``google.auth.compute_engine`` is first imported. Every request must carry
``Metadata-Flavor: Google``, and every answer does. Tokens are those of
:mod:`tests.services.token_checker` (short, HMAC-signed, expiry inside), issued to
the service account :attr:`GceMetadata.email` for :attr:`GceMetadata.lifetime` seconds.
"""

from __future__ import annotations

import json
import math
import secrets
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.services.token_checker import mint

ISSUER = "gce"
ROOT = "/computeMetadata/v1/"


class GceMetadata:
    def __init__(self, *, port: int = 0, project: str = "iamdb-test") -> None:
        self.project = project
        self.email = f"sa-{secrets.token_hex(3)}@{project}.iam.gserviceaccount.com"
        self.key = secrets.token_urlsafe(24)
        #: Seconds a token lives (the server's ``expires_in``).
        self.lifetime = 3600
        #: Scopes asked for, one entry per token request ("" when none).
        self.scopes_asked: list[str] = []
        self.tokens_issued = 0
        self.fail_with: int | None = None
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread: threading.Thread | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def environ(self) -> dict[str, str]:
        return {"GCE_METADATA_HOST": self.host, "GCE_METADATA_IP": self.host}

    def start(self) -> GceMetadata:
        self._thread = threading.Thread(target=self._server.serve_forever, name="gce-metadata", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _token(self, query: dict[str, list[str]]) -> dict[str, Any]:
        with self._lock:
            self.tokens_issued += 1
            self.scopes_asked.append(",".join(query.get("scopes", [])))
            lifetime = int(self.lifetime)
        # Rounded up: the token ends no earlier than google-auth's utcnow() + expires_in.
        expiry = math.ceil(time.time()) + lifetime
        return {
            "access_token": mint(self.key, ISSUER, self.email, expiry),
            "expires_in": lifetime,
            "token_type": "Bearer",
        }

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _send(self, status: int, body: Any, content_type: str = "application/json") -> None:
                data = (json.dumps(body) if content_type == "application/json" else str(body)).encode()
                self.send_response(status)
                self.send_header("Metadata-Flavor", "Google")
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                query = urllib.parse.parse_qs(url.query)
                if self.headers.get("Metadata-Flavor") != "Google":
                    self._send(403, "Missing Metadata-Flavor: Google", "text/plain")
                    return
                # A service account is named "default" or by its email (google-auth does both).
                path = url.path.replace(f"service-accounts/{stand_in.email}/", "service-accounts/default/")
                if path == ROOT + f"instance/service-accounts/{stand_in.email}":
                    path = ROOT + "instance/service-accounts/default"
                if path in ("", "/"):
                    self._send(200, "ok", "text/plain")
                elif path == ROOT + "project/project-id":
                    self._send(200, stand_in.project, "text/plain")
                elif path in (ROOT + "instance/service-accounts/default/email",):
                    self._send(200, stand_in.email, "text/plain")
                elif path in (
                    ROOT + "instance/service-accounts/default/",
                    ROOT + "instance/service-accounts/default",
                ):
                    info = {
                        "aliases": ["default"],
                        "email": stand_in.email,
                        "scopes": ["https://www.googleapis.com/auth/cloud-platform"],
                    }
                    self._send(200, info)
                elif path == ROOT + "instance/service-accounts/default/token":
                    if stand_in.fail_with is not None:
                        self._send(stand_in.fail_with, "emulated failure", "text/plain")
                        return
                    self._send(200, stand_in._token(query))
                else:
                    self._send(404, "not found", "text/plain")

        return Handler
