"""A stand-in for the one Kubernetes API call that Vault's kubernetes auth makes.

OpenBao's kubernetes auth method sends the pod's service account JWT to the
cluster's TokenReview API and trusts its answer. This server answers it for
tokens it issued itself (unsigned JWTs with the usual service account claims),
so the auth method runs for real without a cluster.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


class TokenReviewServer:
    def __init__(self) -> None:
        self.accounts: dict[str, tuple[str, str, str]] = {}  # jwt -> namespace, name, uid
        self.reviews = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                review = json.loads(self.rfile.read(length) or b"{}")
                jwt = review.get("spec", {}).get("token", "")
                server.reviews += 1
                account = server.accounts.get(jwt)
                status: dict[str, Any] = {"authenticated": False}
                if account:
                    namespace, name, uid = account
                    status = {
                        "authenticated": True,
                        "user": {"username": f"system:serviceaccount:{namespace}:{name}", "uid": uid},
                        "audiences": review.get("spec", {}).get("audiences") or [],
                    }
                body = json.dumps(
                    {"kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1", "status": status}
                ).encode()
                self.send_response(201)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def start(self) -> TokenReviewServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    @staticmethod
    def ca_pem() -> str:
        """A throwaway CA certificate: the auth method wants one even for a plain-HTTP host."""
        result = subprocess.run(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-subj",
                "/CN=iamdb-test-kubernetes",
                "-days",
                "1",
                "-keyout",
                os.devnull,
                "-out",
                "-",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        return result.stdout

    def service_account_jwt(self, namespace: str, name: str) -> str:
        """A (legacy-style, unsigned) service account token this server vouches for."""
        uid = str(uuid.uuid4())
        claims = {
            "iss": "kubernetes/serviceaccount",
            "kubernetes.io/serviceaccount/namespace": namespace,
            "kubernetes.io/serviceaccount/service-account.name": name,
            "kubernetes.io/serviceaccount/service-account.uid": uid,
            "sub": f"system:serviceaccount:{namespace}:{name}",
        }
        jwt = f"{_b64({'alg': 'RS256', 'typ': 'JWT'})}.{_b64(claims)}.{_b64({'sig': uuid.uuid4().hex})}"
        self.accounts[jwt] = (namespace, name, uid)
        return jwt
