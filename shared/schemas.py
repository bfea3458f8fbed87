"""Bounded field types for request bodies: every string and number has limits."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

Name = Annotated[str, StringConstraints(min_length=1, max_length=200, strip_whitespace=True)]
Title = Annotated[str, StringConstraints(min_length=1, max_length=300, strip_whitespace=True)]
Text = Annotated[str, StringConstraints(max_length=5000)]
Reason = Annotated[str, StringConstraints(min_length=1, max_length=2000, strip_whitespace=True)]
Unit = Annotated[str, StringConstraints(max_length=50, strip_whitespace=True)]
# Strict: JSON numbers only (integers included); `true` or "30" are not numbers.
Number = Annotated[float, Field(strict=True, allow_inf_nan=False, ge=-1e15, le=1e15)]


def storable(text: str) -> bool:
    """Whether every store can keep `text` as it is: valid UTF-8 (no lone surrogates) and no
    NUL character, which PostgreSQL's text columns refuse (the consumers' views would then
    fail to apply the event that carries it)."""
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _all_storable(value: Any) -> bool:
    if isinstance(value, str):
        return storable(value)
    if isinstance(value, list | tuple):
        return all(_all_storable(v) for v in value)
    if isinstance(value, dict):
        return all(_all_storable(k) and _all_storable(v) for k, v in value.items())
    return True


class Body(BaseModel):
    """A request body: unknown fields are refused, so a typo never passes silently, and text
    every store can keep (see `storable`)."""

    model_config = ConfigDict(extra="forbid", str_max_length=5000)

    @field_validator("*", mode="after")
    @classmethod
    def _storable(cls, value: Any) -> Any:
        if not _all_storable(value):
            raise ValueError("Text must not contain NUL (U+0000) characters")
        return value


class CommandAnswer(BaseModel):
    id: str
    version: int
    position: str | None = Field(
        description="Where the command's last event sits in the service's log "
        "(`<service>:<sequence>`); null when the command changed nothing"
    )
