"""Bearer JWT authentication.

Two ways to verify a token, chosen by settings:

- `SharedSecret`: HS256 with `OKR_JWT_SECRET` (local use; `okr token` mints these);
- `IdentityProvider`: RS256/ES256 tokens of the organisation's identity provider, checked
  against the keys at its JWKS URL (`OKR_JWKS_URL`, cached, fetched again on an unknown `kid`),
  with the issuer and audience required and checked.

Either way the algorithm is pinned (no `none`, no HS256 signed with a public key), and `sub`
and `exp` are required. `sub` becomes the actor recorded on every event; `name`, `roles`
(`admin`, `lead`, `member`, `viewer`; unknown ones grant nothing) and `teams` are read too.
Anything wrong is a 401.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Protocol

import jwt

from shared.schemas import storable

ALGORITHM = "HS256"
PROVIDER_ALGORITHMS = ("RS256", "ES256")
MAX_TOKEN_BYTES = 8 * 1024
MAX_SUBJECT_LENGTH = 200
MAX_LIST_CLAIM = 100
LEEWAY_S = 30
VERIFIED_CACHE_SIZE = 4096
ROLES = frozenset({"admin", "lead", "member", "viewer"})


class AuthError(Exception):
    """The request is not authenticated (HTTP 401)."""


@dataclass(frozen=True)
class Principal:
    actor: str
    claims: dict[str, Any]
    name: str | None = None
    roles: frozenset[str] = frozenset()
    teams: frozenset[str] = frozenset()


class TokenVerifier(Protocol):
    # True when `verify` may block (fetch keys over the network): it then runs in a thread.
    blocking: bool

    def verify(self, token: str) -> Principal: ...


def mint_token(
    secret: str,
    subject: str,
    *,
    ttl_s: int = 3600,
    roles: list[str] | None = None,
    teams: list[str] | None = None,
    name: str | None = None,
    extra: dict[str, Any] | None = None,
) -> str:
    now = int(time.time())
    claims: dict[str, Any] = {"sub": subject, "iat": now, "exp": now + ttl_s}
    if name:
        claims["name"] = name
    if roles is not None:
        claims["roles"] = roles
    if teams is not None:
        claims["teams"] = teams
    if extra:
        claims.update(extra)
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def _list_claim(claims: dict[str, Any], key: str) -> frozenset[str]:
    value = claims.get(key)
    if value is None:
        return frozenset()
    if (
        not isinstance(value, list)
        or len(value) > MAX_LIST_CLAIM
        or not all(isinstance(v, str) and 0 < len(v) <= MAX_SUBJECT_LENGTH for v in value)
    ):
        raise AuthError(f"The bearer token's `{key}` claim must be a list of short strings")
    return frozenset(v.strip() for v in value)


class VerifiedTokens:
    """Tokens already verified, kept until they expire: a client sends the same token with
    every request, and checking its signature and claims again costs more than the rest of a
    request's authentication. Bounded (least recently used go first) and thread-safe."""

    def __init__(self, size: int = VERIFIED_CACHE_SIZE) -> None:
        self.size = size
        self._items: OrderedDict[str, tuple[float, Principal]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, token: str) -> Principal | None:
        with self._lock:
            item = self._items.get(token)
            if item is None:
                return None
            expires, principal = item
            if time.time() > expires:  # verify again: that raises "expired"
                del self._items[token]
                return None
            self._items.move_to_end(token)
            return principal

    def put(self, token: str, principal: Principal) -> None:
        exp = principal.claims.get("exp")
        if not isinstance(exp, int | float) or isinstance(exp, bool):
            return
        with self._lock:
            self._items[token] = (float(exp) + LEEWAY_S, principal)
            self._items.move_to_end(token)
            while len(self._items) > self.size:
                self._items.popitem(last=False)


def principal_of(claims: dict[str, Any]) -> Principal:
    subject = claims.get("sub")
    if (
        not isinstance(subject, str)
        or not subject.strip()
        or len(subject) > MAX_SUBJECT_LENGTH
        or not storable(subject)  # the actor is stored on every event and in every view
    ):
        raise AuthError("The bearer token has no usable subject (sub)")
    name = claims.get("name")
    return Principal(
        actor=subject,
        claims=claims,
        name=name if isinstance(name, str) and len(name) <= MAX_SUBJECT_LENGTH else None,
        roles=_list_claim(claims, "roles") & ROLES,  # unknown roles grant nothing
        teams=_list_claim(claims, "teams"),
    )


def _decode(token: str, key: Any, algorithms: list[str], **kwargs: Any) -> dict[str, Any]:
    if len(token) > MAX_TOKEN_BYTES:
        raise AuthError("The bearer token is too large")
    try:
        claims: dict[str, Any] = jwt.decode(
            token, key, algorithms=algorithms, leeway=LEEWAY_S, **kwargs
        )
    except jwt.ExpiredSignatureError:
        raise AuthError("The bearer token has expired") from None
    except jwt.InvalidTokenError as e:
        raise AuthError(f"The bearer token is not valid: {e}") from None
    return claims


class SharedSecret:
    """HS256 tokens signed with the deployment's own secret."""

    blocking = False

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.verified = VerifiedTokens()

    def verify(self, token: str) -> Principal:
        principal = self.verified.get(token)
        if principal is None:
            claims = _decode(token, self.secret, [ALGORITHM], options={"require": ["sub", "exp"]})
            principal = principal_of(claims)
            self.verified.put(token, principal)
        return principal


class IdentityProvider:
    """RS256/ES256 tokens of the organisation's identity provider, by its JWKS.

    pyjwt's `PyJWKClient` caches the key set (5 minutes) and fetches it again when a token
    names a `kid` it does not have, so a rotated key works without a restart. The fetch is
    blocking: this runs in the thread pool (`blocking`).
    """

    blocking = True

    def __init__(
        self,
        jwks_url: str,
        *,
        issuer: str,
        audience: str,
        algorithms: tuple[str, ...] = PROVIDER_ALGORITHMS,
        lifespan_s: float = 300,
        timeout_s: float = 5,
    ) -> None:
        self.issuer = issuer
        self.audience = audience
        self.algorithms = list(algorithms)
        self.keys = jwt.PyJWKClient(
            jwks_url, lifespan=lifespan_s, timeout=timeout_s, cooldown_duration=0
        )
        self.verified = VerifiedTokens()

    def verify(self, token: str) -> Principal:
        principal = self.verified.get(token)
        if principal is None:
            principal = self._verify(token)
            self.verified.put(token, principal)
        return principal

    def _verify(self, token: str) -> Principal:
        if len(token) > MAX_TOKEN_BYTES:
            raise AuthError("The bearer token is too large")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as e:
            raise AuthError(f"The bearer token is not valid: {e}") from None
        if header.get("alg") not in self.algorithms:
            raise AuthError(f"The bearer token must be signed with one of {self.algorithms}")
        try:
            key = self.keys.get_signing_key_from_jwt(token)
        except jwt.PyJWKClientConnectionError:
            raise AuthError("The identity provider's keys could not be fetched") from None
        except jwt.PyJWKClientError as e:
            raise AuthError(f"The bearer token's key is unknown: {e}") from None
        claims = _decode(
            token,
            key,
            self.algorithms,
            issuer=self.issuer,
            audience=self.audience,
            options={"require": ["sub", "exp", "iss", "aud"]},
        )
        return principal_of(claims)


def bearer_token(authorization: str | None) -> str:
    if not authorization:
        raise AuthError("Missing Authorization header with a Bearer token")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError("The Authorization header must be 'Bearer <token>'")
    return token.strip()
