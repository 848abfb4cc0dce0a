"""Thread-safe accounting of LLM usage and enforcement of the per-run budgets.

Budgets are enforced *before* a request is sent, by reservation: a request reserves one call and
an estimate of its tokens (estimated prompt tokens + its completion cap).  If the calls/tokens
already spent plus everything reserved by requests in flight plus this reservation would exceed a
budget, the request is refused with :class:`BudgetExceeded` and nothing is sent.  When the request
finishes, its reservation is released and the usage the endpoint reported is booked instead.  So
concurrent workers can never jointly overshoot the call budget, and can overshoot the token budget
only by the error of the prompt estimate (4 characters per token).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from difflens.llm.errors import BudgetExceeded


@dataclass
class Usage:
    """A JSON-safe snapshot of what one client has spent."""

    calls: int = 0
    """Requests sent to the endpoint (every attempt: first tries, retries and re-asks)."""
    retries: int = 0
    """Attempts that repeated a failed request (429, 5xx, timeout, connection error)."""
    reasks: int = 0
    """Requests that re-asked after the parse callback rejected an answer."""
    failures: int = 0
    """Attempts that failed (each failed attempt, retried or not)."""
    refused: int = 0
    """Requests refused by a budget (never sent; not counted in ``calls``)."""
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def to_dict(self) -> dict[str, int]:
        out = asdict(self)
        out["total_tokens"] = self.total_tokens
        return out


def estimate_prompt_tokens(messages: Sequence[Mapping[str, Any]], tools: Any = None) -> int:
    """Rough token count of a request (4 characters per token) used only for budget reservation."""
    chars = 0
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            chars += len(content)
        elif content is not None:
            chars += len(str(content))
        chars += len(str(message.get("tool_calls") or ""))
    if tools:
        chars += len(str(tools))
    return math.ceil(chars / 4) + 4 * len(messages)


class Accounting:
    """Counts usage and enforces ``max_calls`` / ``max_tokens`` for one client."""

    def __init__(self, max_calls: int | None = None, max_tokens: int | None = None) -> None:
        self.max_calls = max_calls
        self.max_tokens = max_tokens
        self._usage = Usage()
        self._reserved_calls = 0
        self._reserved_tokens = 0
        self._lock = threading.Lock()

    # -- budget ---------------------------------------------------------------------------------
    def reserve(self, tokens: int) -> None:
        """Reserve one call and ``tokens`` tokens, or raise :class:`BudgetExceeded`."""
        with self._lock:
            used_calls = self._usage.calls + self._reserved_calls
            if self.max_calls is not None and used_calls + 1 > self.max_calls:
                self._usage.refused += 1
                raise BudgetExceeded(
                    f"LLM call budget exhausted: {used_calls} of max_calls={self.max_calls} "
                    "used; raise the budget (--llm-max-calls) or grade offline"
                )
            used_tokens = self._usage.total_tokens + self._reserved_tokens
            if self.max_tokens is not None and used_tokens + tokens > self.max_tokens:
                self._usage.refused += 1
                raise BudgetExceeded(
                    f"LLM token budget would be exceeded: {used_tokens} used or reserved + "
                    f"~{tokens} for this request > max_tokens={self.max_tokens}; raise the budget "
                    "(--llm-max-tokens) or grade offline"
                )
            self._reserved_calls += 1
            self._reserved_tokens += tokens

    def settle(
        self,
        reserved_tokens: int,
        *,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        failed: bool = False,
        retry: bool = False,
        reask: bool = False,
    ) -> None:
        """Release a reservation and book the attempt it covered."""
        with self._lock:
            self._reserved_calls -= 1
            self._reserved_tokens -= reserved_tokens
            self._usage.calls += 1
            self._usage.prompt_tokens += prompt_tokens
            self._usage.completion_tokens += completion_tokens
            self._usage.failures += int(failed)
            self._usage.retries += int(retry)
            self._usage.reasks += int(reask)

    # -- reading --------------------------------------------------------------------------------
    def snapshot(self) -> Usage:
        with self._lock:
            return Usage(**asdict(self._usage))

    def to_dict(self) -> dict[str, Any]:
        """Usage plus budgets, JSON-safe."""
        out: dict[str, Any] = self.snapshot().to_dict()
        out["max_calls"] = self.max_calls
        out["max_tokens"] = self.max_tokens
        return out
