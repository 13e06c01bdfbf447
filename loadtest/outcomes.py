"""How one answer counts in a load test: a success, or a failure of a named kind. The names are
stable strings, so locust groups failures by them and overload (503) and scoring timeouts (504)
show as their own rows rather than as one lump of errors."""

from __future__ import annotations

OVERLOAD = "503 queue full/timeout (overload)"
SCORING_TIMEOUT = "504 scoring timeout"
NO_RESPONSE = "no response"


def failure_kind(status: int, error: BaseException | None = None) -> str | None:
    """None for a 2xx; else the failure's name. Status 0 is locust's "no HTTP answer at all"
    (refused, reset, timed out), named after the error's class."""
    if 200 <= status < 300:
        return None
    if status == 503:
        return OVERLOAD
    if status == 504:
        return SCORING_TIMEOUT
    if status == 0:
        return f"{NO_RESPONSE}: {type(error).__name__}" if error is not None else NO_RESPONSE
    return f"HTTP {status}"
