"""Bearer JWT authentication: HS256 with the secret from settings, the algorithm pinned.

`sub` becomes the actor recorded on every event. A token without `sub` or `exp`, with another
algorithm (including `none`), a bad signature or past its expiry is refused with 401.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import jwt

ALGORITHM = "HS256"
MAX_TOKEN_BYTES = 8 * 1024
MAX_SUBJECT_LENGTH = 200
LEEWAY_S = 30


class AuthError(Exception):
    """The request is not authenticated (HTTP 401)."""


@dataclass(frozen=True)
class Principal:
    actor: str
    claims: dict[str, Any]


def mint_token(
    secret: str, subject: str, *, ttl_s: int = 3600, extra: dict[str, Any] | None = None
) -> str:
    now = int(time.time())
    claims: dict[str, Any] = {"sub": subject, "iat": now, "exp": now + ttl_s}
    if extra:
        claims.update(extra)
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def verify_token(secret: str, token: str) -> Principal:
    if len(token) > MAX_TOKEN_BYTES:
        raise AuthError("The bearer token is too large")
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            options={"require": ["sub", "exp"]},
            leeway=LEEWAY_S,
        )
    except jwt.ExpiredSignatureError:
        raise AuthError("The bearer token has expired") from None
    except jwt.InvalidTokenError as e:
        raise AuthError(f"The bearer token is not valid: {e}") from None
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject.strip() or len(subject) > MAX_SUBJECT_LENGTH:
        raise AuthError("The bearer token has no usable subject (sub)")
    return Principal(actor=subject, claims=claims)


def bearer_token(authorization: str | None) -> str:
    if not authorization:
        raise AuthError("Missing Authorization header with a Bearer token")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError("The Authorization header must be 'Bearer <token>'")
    return token.strip()
