"""Claims of the docs (the FAQ, the RDS page) that no other test proved: signing a token
makes no AWS request, and an RDS Proxy endpoint is signed for as it is."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from iamdb.sources import RdsIamToken
from tests.unit.test_aws_sources import session, target

PROXY = "orders-proxy.proxy-c9akciq32.eu-west-1.rds.amazonaws.com"


def test_signing_a_token_makes_no_aws_request(monkeypatch: pytest.MonkeyPatch) -> None:
    """No API call and no HTTP request: the token is a local SigV4 signature, so an AWS
    outage or throttling cannot fail a new connection (resolving the role's credentials
    aside, which botocore does)."""
    import botocore.client
    import botocore.endpoint

    requests: list[str] = []

    def api_call(client: Any, operation: str, params: Any) -> Any:
        requests.append(operation)
        raise AssertionError(f"an AWS API call: {operation}")

    def send(endpoint: Any, *args: Any, **kwargs: Any) -> Any:
        requests.append("http")
        raise AssertionError("an HTTP request")

    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", api_call)
    monkeypatch.setattr(botocore.endpoint.Endpoint, "_send", send)
    source = RdsIamToken(session=session())
    token = source.get_password(target())
    assert token.startswith("db.internal:5432/?") and "Action=connect" in token
    assert requests == []


def test_an_rds_proxy_endpoint_is_signed_for_as_it_is() -> None:
    """Through RDS Proxy, HOST is the proxy's endpoint: the token is signed for that name
    and port, in the region the name holds, with nothing to set but the ENGINE and TLS."""
    source = RdsIamToken(session=session(region="us-east-1"))  # boto3's region is not the proxy's
    token = source.get_password(target(host=PROXY, port=5432, user="app_iam"))
    url = urlsplit("https://" + token)
    query = parse_qs(url.query)
    assert url.netloc == f"{PROXY}:5432"
    assert query["Action"] == ["connect"] and query["DBUser"] == ["app_iam"]
    assert "/eu-west-1/rds-db/aws4_request" in query["X-Amz-Credential"][0]


def test_a_credential_with_an_expiry_overrides_the_callable_sources_ttl() -> None:
    """docs/sources/callable.md: a Credential's ``expires_at`` is its lifetime, whatever the ttl."""
    from iamdb import Credential
    from iamdb.sources import CallableSource
    from tests.fakeclock import FakeClock, run_now

    clock = FakeClock()
    calls: list[float] = []

    def func() -> Credential:
        calls.append(clock.time())
        return Credential(password=f"pw-{len(calls)}-value", expires_at=clock.time() + 100)

    source = CallableSource(func, ttl=3600, clock=clock)
    source._cache._spawn = run_now
    assert source.get_password() == "pw-1-value"
    clock.advance(50)
    assert source.get_password() == "pw-1-value" and len(calls) == 1
    clock.advance(49)  # a second before the credential's end, far before the ttl's
    source.get_password()
    assert len(calls) == 2 and source.get_password() == "pw-2-value"
