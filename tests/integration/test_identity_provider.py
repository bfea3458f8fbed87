"""Tokens from the organisation's identity provider: RS256/ES256 verified by a JWKS served over
HTTP here, with the issuer and audience checked, keys cached and fetched again on an unknown
`kid` (rotation), and every forgery refused."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from services.goals.main import GoalsSettings
from shared.auth import AuthError, IdentityProvider, SharedSecret
from tests.support import SECRET, serve, token
from tests.system import app_for

ISSUER = "https://id.example.com/"
AUDIENCE = "okr-services"


class Jwks:
    """A JWKS endpoint on loopback whose keys a test can change (key rotation)."""

    def __init__(self) -> None:
        self.keys: dict[str, Any] = {}
        self.fetches = 0
        jwks = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                jwks.fetches += 1
                body = json.dumps({"keys": list(jwks.keys.values())}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/.well-known/jwks.json"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def publish(self, kid: str, private_key: Any) -> None:
        public = private_key.public_key()
        algorithm = RSAAlgorithm if isinstance(public, rsa.RSAPublicKey) else ECAlgorithm
        jwk = json.loads(algorithm.to_jwk(public))
        self.keys[kid] = {**jwk, "kid": kid, "use": "sig"}


@pytest.fixture(scope="module")
def jwks() -> Iterator[Jwks]:
    server = Jwks()
    yield server
    server.server.shutdown()


RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
OTHER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    return {
        "sub": "alice",
        "name": "Alice Doe",
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": now,
        "exp": now + 600,
        "roles": ["lead", "astronaut"],
        "teams": ["growth"],
        **overrides,
    }


def signed(key: Any = RSA_KEY, kid: str = "rsa-1", alg: str = "RS256", **overrides: Any) -> str:
    return jwt.encode(claims(**overrides), key, algorithm=alg, headers={"kid": kid})


@pytest.fixture
def provider(jwks: Jwks) -> IdentityProvider:
    jwks.publish("rsa-1", RSA_KEY)
    jwks.publish("ec-1", EC_KEY)
    return IdentityProvider(jwks.url, issuer=ISSUER, audience=AUDIENCE)


def test_a_valid_token_of_the_provider_passes_with_its_claims(provider: IdentityProvider) -> None:
    principal = provider.verify(signed())
    assert principal.actor == "alice" and principal.name == "Alice Doe"
    assert principal.roles == {"lead"}, "an unknown role grants nothing"
    assert principal.teams == {"growth"}
    assert provider.verify(signed(EC_KEY, "ec-1", "ES256")).actor == "alice"


def _none_token() -> str:
    header = jwt.utils.base64url_encode(json.dumps({"alg": "none", "kid": "rsa-1"}).encode())
    body = jwt.utils.base64url_encode(json.dumps(claims()).encode())
    return f"{header.decode()}.{body.decode()}."


def _hs256_with_public_key() -> str:
    """Algorithm confusion: HS256 with the provider's public key as the HMAC secret."""
    pem = RSA_KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = {"alg": "HS256", "kid": "rsa-1", "typ": "JWT"}
    segments = [
        jwt.utils.base64url_encode(json.dumps(header).encode()),
        jwt.utils.base64url_encode(json.dumps(claims()).encode()),
    ]
    signing_input = b".".join(segments)
    import hashlib
    import hmac

    signature = hmac.new(pem, signing_input, hashlib.sha256).digest()
    return (signing_input + b"." + jwt.utils.base64url_encode(signature)).decode()


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda: signed(iss="https://evil.example.com/"), "(?i)issuer"),
        (lambda: signed(aud="another-app"), "(?i)audience"),
        (lambda: signed(exp=int(time.time()) - 3600), "expired"),
        (lambda: signed(OTHER_KEY, "rsa-unknown"), "unknown"),
        (lambda: signed(OTHER_KEY, "rsa-1"), "not valid"),  # a known kid, the wrong key
        (_none_token, "must be signed"),
        (_hs256_with_public_key, "must be signed"),
        (lambda: jwt.encode(claims(), SECRET, algorithm="HS256"), "must be signed"),
        (lambda: signed(sub=None), "not valid"),
        (lambda: signed(roles="admin"), "roles"),
        (lambda: signed(teams=["x" * 500]), "teams"),
    ],
)
def test_forgeries_and_mistakes_are_refused(
    provider: IdentityProvider, make: Any, reason: str
) -> None:
    with pytest.raises(AuthError, match=reason):
        provider.verify(make())


def test_a_rotated_key_is_fetched_when_a_token_names_it(
    jwks: Jwks, provider: IdentityProvider
) -> None:
    assert provider.verify(signed()).actor == "alice"
    fetched = jwks.fetches
    assert provider.verify(signed()).actor == "alice"
    assert jwks.fetches == fetched, "the key set is cached"

    rotated = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwks.publish("rsa-2", rotated)
    assert provider.verify(signed(rotated, "rsa-2")).actor == "alice"
    assert jwks.fetches == fetched + 1, "an unknown kid fetches the key set again"


def test_the_shared_secret_refuses_provider_tokens_and_reads_roles() -> None:
    local = SharedSecret(SECRET)
    assert local.verify(token("bob", roles=["viewer"], teams=["data"])).roles == {"viewer"}
    with pytest.raises(AuthError):
        local.verify(signed())


async def test_a_service_set_up_for_the_provider_takes_its_tokens_only(
    jwks: Jwks, goals_settings: GoalsSettings
) -> None:
    jwks.publish("rsa-1", RSA_KEY)
    settings = goals_settings.model_copy(
        update={"jwks_url": jwks.url, "jwt_issuer": ISSUER, "jwt_audience": AUDIENCE}
    )
    async with serve(app_for("goals", settings)) as goals:
        body = {"name": "Q", "starts_on": "2027-01-01", "ends_on": "2027-03-31"}
        # The provider's roles decide: its lead may not run cycles, its admin may.
        r = await goals.client.post(
            "/v1/cycles", json=body, headers={"Authorization": f"Bearer {signed()}"}
        )
        assert r.status_code == 403, r.text
        admin = signed(roles=["admin"])
        r = await goals.client.post(
            "/v1/cycles", json=body, headers={"Authorization": f"Bearer {admin}"}
        )
        assert r.status_code == 201, r.text
        r = await goals.client.get(
            f"/v1/cycles/{r.json()['id']}", headers={"Authorization": f"Bearer {signed()}"}
        )
        assert r.status_code == 200
        # The local shared-secret tokens no longer work, nor does a wrong audience.
        for bad in (token("alice"), signed(aud="another-app")):
            r = await goals.client.post(
                "/v1/cycles", json=body, headers={"Authorization": f"Bearer {bad}"}
            )
            assert r.status_code == 401, r.text
            assert r.headers["content-type"].startswith("application/problem+json")
