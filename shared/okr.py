"""The OKR arithmetic every service and view agrees on (DESIGN §6): pure functions, no I/O."""

from __future__ import annotations

from collections.abc import Iterable


def progress_of(kind: str, start: float, target: float, current: float) -> float:
    """(current - start) / (target - start), clamped to 0..1; works for decreasing targets.
    A boolean key result is done (1) or not (0)."""
    if kind == "boolean":
        return 1.0 if current >= 1 else 0.0
    if target == start:
        return 1.0 if current == target else 0.0
    return min(1.0, max(0.0, (current - start) / (target - start)))


def suggested_score(progress: float) -> float:
    """The score a review suggests: progress rounded to one decimal."""
    return round(progress + 1e-9, 1)


def status_of(confidence: int | None) -> str | None:
    """Confidence 0-10: 7 and above on track, 4 to 6 at risk, 3 and below off track."""
    if confidence is None:
        return None
    if confidence >= 7:
        return "on_track"
    if confidence >= 4:
        return "at_risk"
    return "off_track"


def weighted_progress(parts: Iterable[tuple[float, float]]) -> float | None:
    """The weight-averaged progress of (progress, weight) pairs; None when there are none."""
    total = weight = 0.0
    for progress, w in parts:
        total += progress * w
        weight += w
    return None if weight == 0 else total / weight
