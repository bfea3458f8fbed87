"""Verified tokens are remembered until they expire, never past it, and the memory is bounded."""

from __future__ import annotations

import time

import pytest

from shared import auth
from shared.auth import AuthError, SharedSecret, VerifiedTokens, mint_token

SECRET = "unit-secret-unit-secret-unit-secret"


def test_a_token_is_checked_once_then_remembered(monkeypatch: pytest.MonkeyPatch) -> None:
    decoded = []
    real = auth._decode
    monkeypatch.setattr(auth, "_decode", lambda *a, **k: decoded.append(1) or real(*a, **k))
    verifier = SharedSecret(SECRET)
    token = mint_token(SECRET, "ana", roles=["member"], teams=["a"])
    first = verifier.verify(token)
    second = verifier.verify(token)
    assert first == second and first.actor == "ana" and first.teams == frozenset({"a"})
    assert len(decoded) == 1


def test_a_remembered_token_is_refused_once_it_expires() -> None:
    verifier = SharedSecret(SECRET)
    # Within the leeway for one more second.
    token = mint_token(SECRET, "ana", ttl_s=1 - auth.LEEWAY_S)
    assert verifier.verify(token).actor == "ana"
    assert verifier.verified.get(token) is not None
    time.sleep(2.1)
    with pytest.raises(AuthError, match="expired"):
        verifier.verify(token)


def test_tokens_that_fail_are_never_remembered() -> None:
    verifier = SharedSecret(SECRET)
    forged = mint_token("another-secret-another-secret-1234", "mallory")
    for _ in range(2):
        with pytest.raises(AuthError):
            verifier.verify(forged)
    assert verifier.verified.get(forged) is None


def test_the_memory_is_bounded_least_recently_used_first() -> None:
    cache = VerifiedTokens(size=2)
    verifier = SharedSecret(SECRET)
    tokens = [mint_token(SECRET, f"user-{i}") for i in range(3)]
    principals = [verifier.verify(t) for t in tokens]
    cache.put(tokens[0], principals[0])
    cache.put(tokens[1], principals[1])
    assert cache.get(tokens[0]) is principals[0]  # now the most recently used
    cache.put(tokens[2], principals[2])
    assert cache.get(tokens[1]) is None
    assert cache.get(tokens[0]) is principals[0]
    assert cache.get(tokens[2]) is principals[2]
