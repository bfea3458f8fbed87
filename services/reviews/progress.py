"""The review service's view of each key result's latest check-in, from the check-in service's
public events: what a review suggests as a score and where a carried key result starts.

A projector for the shared consumer (beside the goals catalogue, in the same transaction). A
correction changes the latest value only when it corrects the latest check-in.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.consumer import InvalidMessage, Received
from shared.sql import Tx

CHECKED_IN = "okr.checkins.key_result_progress.checked_in"
CORRECTED = "okr.checkins.key_result_progress.check_in_corrected"


class _CheckIn(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    check_in_id: UUID
    key_result_id: UUID
    value: float = Field(allow_inf_nan=False)
    confidence: int = Field(ge=0, le=10)


@dataclass(frozen=True)
class Latest:
    key_result_id: UUID
    check_in_id: UUID
    value: float
    confidence: int


TABLES = [
    "CREATE TABLE IF NOT EXISTS {t}latest_check_ins (key_result_id TEXT PRIMARY KEY,"
    " check_in_id TEXT NOT NULL, value DOUBLE PRECISION NOT NULL, confidence INTEGER NOT NULL)",
]


class ProgressView:
    def __init__(self) -> None:
        self.latest: dict[UUID, Latest] = {}
        self._staged: dict[UUID, Latest] = {}
        self._lock = threading.Lock()

    def value(self, key_result_id: UUID) -> float | None:
        entry = self.latest.get(key_result_id)
        return None if entry is None else entry.value

    # --- the projector ------------------------------------------------------------------

    def tables(self) -> Sequence[str]:
        return TABLES

    def load(self, tx: Tx) -> None:
        rows = tx.execute("SELECT * FROM {t}latest_check_ins").fetchall()
        with self._lock:
            self.latest = {
                UUID(r["key_result_id"]): Latest(
                    UUID(r["key_result_id"]),
                    UUID(r["check_in_id"]),
                    float(r["value"]),
                    int(r["confidence"]),
                )
                for r in rows
            }

    def apply(self, tx: Tx, event: Received) -> None:
        if event.name not in (CHECKED_IN, CORRECTED):
            return
        try:
            d = _CheckIn.model_validate(event.data)
        except ValidationError as e:
            raise InvalidMessage(f"{event.type}: {e.errors()[0]['msg']}") from e
        current = self._staged.get(d.key_result_id) or self.latest.get(d.key_result_id)
        if event.name == CHECKED_IN:
            entry = Latest(d.key_result_id, d.check_in_id, d.value, d.confidence)
        elif current is not None and current.check_in_id == d.check_in_id:
            entry = replace(current, value=d.value, confidence=d.confidence)
        else:
            return  # a correction of an older check-in: the latest stays
        self._staged[entry.key_result_id] = entry

    def flush(self, tx: Tx) -> None:
        # A batch's last entry per key result, in one statement (or a few) at its end.
        tx.upsert(
            "{t}latest_check_ins",
            [
                (str(e.key_result_id), str(e.check_in_id), e.value, e.confidence)
                for e in self._staged.values()
            ],
            " ON CONFLICT (key_result_id) DO UPDATE SET check_in_id = excluded.check_in_id,"
            " value = excluded.value, confidence = excluded.confidence",
        )

    def committed(self) -> None:
        with self._lock:
            self.latest.update(self._staged)
        self._staged.clear()

    def rolled_back(self) -> None:
        self._staged.clear()
