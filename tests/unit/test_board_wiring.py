"""How the launcher wires the board to the check-in service: the URL the board sends commands
to, and the board's origins allowed by CORS beside those an operator configured."""

from __future__ import annotations

import pytest

from shared.launcher import board_wiring
from shared.settings import Settings


def test_the_embedded_default_lets_the_board_on_loopback_call_the_check_in_service(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OKR_CORS_ORIGINS", raising=False)
    monkeypatch.setenv("OKR_PROJECTIONS_PORT", "9004")
    monkeypatch.setenv("OKR_CHECKINS_PORT", "9002")
    wiring = board_wiring(Settings(_env_file=None), {})  # type: ignore[call-arg]
    assert wiring == {
        "OKR_CORS_ORIGINS": "http://127.0.0.1:9004,http://localhost:9004",
        "OKR_BOARD_CHECKINS_URL": "http://127.0.0.1:9002",
    }
    # What the launcher passes on is what the services accept.
    assert Settings(cors_origins=wiring["OKR_CORS_ORIGINS"]).cors_origin_list == [
        "http://127.0.0.1:9004",
        "http://localhost:9004",
    ]


def test_configured_origins_and_url_are_kept() -> None:
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        host="0.0.0.0",
        cors_origins="https://okr.example.com, http://127.0.0.1:8004",
    )
    wiring = board_wiring(settings, {"OKR_BOARD_CHECKINS_URL": "https://checkins.example.com"})
    assert wiring == {
        "OKR_CORS_ORIGINS": "https://okr.example.com,http://127.0.0.1:8004,http://localhost:8004",
        "OKR_BOARD_CHECKINS_URL": "https://checkins.example.com",
    }


def test_a_named_host_is_its_own_origin() -> None:
    settings = Settings(_env_file=None, host="okr.internal")  # type: ignore[call-arg]
    assert board_wiring(settings, {}) == {
        "OKR_CORS_ORIGINS": "http://okr.internal:8004",
        "OKR_BOARD_CHECKINS_URL": "http://okr.internal:8002",
    }
