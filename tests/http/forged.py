"""Bearer tokens a service must refuse: forged, tampered, expired, malformed."""

from __future__ import annotations

import base64
import json
import time
import warnings
from collections.abc import Callable
from typing import Any

import jwt

from tests.support import SECRET, token


def _b64url(data: dict) -> str:
    raw = json.dumps(data, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {"sub": "alice", "iat": now, "exp": now + 3600, **overrides}
    return {k: v for k, v in claims.items() if v is not None}


def alg_none_token() -> str:
    return f"{_b64url({'alg': 'none', 'typ': 'JWT'})}.{_b64url(_claims())}."


def signed(secret: str = SECRET, algorithm: str = "HS256", **claims: Any) -> str:
    return jwt.encode(_claims(**claims), secret, algorithm=algorithm)


def hs512_token() -> str:
    """Signed with the right secret, but not with the one algorithm the services accept."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PyJWT finds the secret short for SHA-512
        return signed(algorithm="HS512")


def tampered_token() -> str:
    """A valid token whose payload was swapped for another subject's: the signature fails."""
    header, _, signature = token("alice").split(".")
    return f"{header}.{_b64url(_claims(sub='admin'))}.{signature}"


# None: no Authorization header at all.
BAD_AUTHORIZATION: dict[str, Callable[[], str | None]] = {
    "no token": lambda: None,
    "empty header": lambda: "",
    "Basic scheme": lambda: "Basic YWxpY2U6c2VjcmV0",
    "Bearer without token": lambda: "Bearer",
    "valid token under another scheme": lambda: f"Token {token('alice')}",
    "token without scheme": lambda: token("alice"),
    "garbage": lambda: "Bearer not-a-jwt",
    "garbage in three parts": lambda: "Bearer aaa.bbb.ccc",
    "bad signature (another key)": lambda: (
        f"Bearer {signed('another-secret-that-is-long-enough-for-hs256-xyz')}"
    ),
    "bad signature (payload swapped)": lambda: f"Bearer {tampered_token()}",
    "alg none": lambda: f"Bearer {alg_none_token()}",
    "HS512": lambda: f"Bearer {hs512_token()}",
    "expired": lambda: f"Bearer {token('alice', ttl_s=-100)}",
    "expired long ago": lambda: f"Bearer {signed(exp=1_000_000_000, iat=999_999_000)}",
    "not yet valid (nbf)": lambda: f"Bearer {signed(nbf=int(time.time()) + 3600)}",
    "no sub": lambda: f"Bearer {signed(sub=None)}",
    "blank sub": lambda: f"Bearer {token('   ')}",
    "sub a number": lambda: f"Bearer {signed(sub=42)}",
    "sub too long": lambda: f"Bearer {token('a' * 201)}",
    "no exp": lambda: f"Bearer {signed(exp=None)}",
    "exp a word": lambda: f"Bearer {signed(exp='tomorrow')}",
    "token over 8 KiB": lambda: f"Bearer {signed(pad='x' * 9000)}",
}
