"""Which request failures to retry, how long to wait, and how to word the final error.

Kept apart from the client so the policy is testable without a server.  ``openai`` is imported
inside :func:`classify` only (importing ``difflens.llm`` must not import it).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from difflens.llm.errors import shorten

#: HTTP statuses worth repeating: rate limits, request timeouts/conflicts, server errors.
RETRY_STATUSES = frozenset({408, 409, 429})


@dataclass(frozen=True)
class Failure:
    """One failed attempt, classified."""

    kind: str
    """"timeout", "connection", "status" or "bad_response"."""
    retryable: bool
    reason: str
    """Short human reason (server body or transport error), not yet redacted."""
    status: int | None = None
    retry_after: float | None = None
    """Seconds the server asked us to wait (Retry-After header), if any."""


def backoff_delay(
    retry_index: int,
    base: float,
    cap: float,
    jitter: float,
    retry_after: float | None = None,
    rng: random.Random | None = None,
) -> float:
    """Seconds to sleep before retry number ``retry_index`` (0-based).

    Exponential (``base * 2**i``, capped at ``cap``) plus up to ``jitter`` × that at random, so
    parallel workers hitting the same rate limit spread out.  A server's Retry-After wins when it
    is longer, but is capped too: a misbehaving proxy must not stall a run for an hour.
    """
    delay = min(cap, base * (2.0**retry_index))
    if retry_after is not None:
        delay = max(delay, min(cap, retry_after))
    spread = (rng or random).random() * jitter * delay
    return delay + spread


def classify(exc: BaseException) -> Failure | None:
    """Classify an exception raised by the ``openai`` client; ``None`` for anything else."""
    import openai  # lazy: heavy, and optional for offline users

    if isinstance(exc, openai.APITimeoutError):
        return Failure("timeout", True, "request timed out")
    if isinstance(exc, openai.APIConnectionError):
        return Failure("connection", True, _root_reason(exc))
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        return Failure(
            "status",
            status in RETRY_STATUSES or status >= 500,
            shorten(_status_body(exc)),
            status=status,
            retry_after=_retry_after(exc),
        )
    if isinstance(exc, openai.APIResponseValidationError | ValueError):
        # 200 with a body that is not a chat completion (broken proxy, wrong path, ...).
        return Failure("bad_response", True, shorten(str(exc)))
    return None


def _root_reason(exc: BaseException) -> str:
    """The innermost cause's message: 'Connection error.' alone does not help anyone."""
    reason = str(exc)
    seen = set()
    cause = exc.__cause__ or exc.__context__
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if str(cause):
            reason = str(cause)
        cause = cause.__cause__ or cause.__context__
    return shorten(reason, 160)


def _status_body(exc: BaseException) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        message = body.get("message") or body.get("error") or body
        return str(message)
    if body:
        return str(body)
    return str(getattr(exc, "message", "") or exc)


def _retry_after(exc: BaseException) -> float | None:
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    value = headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:  # an HTTP date: not worth parsing, fall back to our own backoff
        return None
