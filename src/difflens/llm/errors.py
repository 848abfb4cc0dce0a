"""Errors raised by the LLM client.

All are :class:`~difflens.errors.DifflensError` (one-line, user-facing): the CLI prints them
without a traceback.  Messages never contain the API key (see :func:`redact`).
"""

from __future__ import annotations

from difflens.errors import DifflensError


class LLMError(DifflensError):
    """Any failure of an LLM request that survived retries."""


class LLMCallError(LLMError):
    """The endpoint could not be reached or kept failing (after retries), or refused the request."""


class LLMParseError(LLMError):
    """The model's answer stayed malformed after all re-asks."""


class BudgetExceeded(LLMError):
    """A request was refused because it would exceed the per-run call or token budget."""


def redact(text: str, secret: str | None) -> str:
    """``text`` with every occurrence of ``secret`` (and of its first half) masked.

    Servers sometimes echo a rejected key back, possibly cut short; masking the first half as well
    covers such partial echoes of long keys.
    """
    if not secret:
        return text
    text = text.replace(secret, "<redacted>")
    if len(secret) >= 12:
        text = text.replace(secret[: len(secret) // 2], "<redacted>")
    return text


def shorten(text: str, limit: int = 200) -> str:
    """One line, at most ``limit`` characters (for quoting server bodies and model answers)."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."
