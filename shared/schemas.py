"""Bounded field types for request bodies: every string and number has limits."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

Name = Annotated[str, StringConstraints(min_length=1, max_length=200, strip_whitespace=True)]
Title = Annotated[str, StringConstraints(min_length=1, max_length=300, strip_whitespace=True)]
Text = Annotated[str, StringConstraints(max_length=5000)]
Reason = Annotated[str, StringConstraints(min_length=1, max_length=2000, strip_whitespace=True)]
Unit = Annotated[str, StringConstraints(max_length=50, strip_whitespace=True)]
# Strict: JSON numbers only (integers included); `true` or "30" are not numbers.
Number = Annotated[float, Field(strict=True, allow_inf_nan=False, ge=-1e15, le=1e15)]


class Body(BaseModel):
    """A request body: unknown fields are refused, so a typo never passes silently."""

    model_config = ConfigDict(extra="forbid", str_max_length=5000)


class CommandAnswer(BaseModel):
    id: str
    version: int
    position: str | None = Field(
        description="Where the command's last event sits in the service's log "
        "(`<service>:<sequence>`); null when the command changed nothing"
    )
