"""Typed results of a chat-completions request."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

Message = dict[str, Any]
"""One chat message in the OpenAI format: ``{"role": "user", "content": "..."}``."""


@dataclass(frozen=True)
class ToolCall:
    """A function call the model asked for."""

    id: str
    name: str
    arguments: str
    """The arguments exactly as the model wrote them (a JSON string, possibly malformed)."""

    def parsed_arguments(self) -> Any:
        """The arguments decoded from JSON; raises ``ValueError`` when they are not valid JSON."""
        return json.loads(self.arguments or "{}")

    def to_dict(self) -> dict[str, Any]:
        """The OpenAI wire format, for appending the assistant turn to a conversation."""
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


@dataclass(frozen=True)
class ChatResult:
    """The answer to one chat request (after retries and re-asks)."""

    text: str
    """The assistant's text ("" when it only called tools or said nothing)."""
    tool_calls: tuple[ToolCall, ...] = ()
    finish_reason: str | None = None
    prompt_tokens: int = 0
    """Tokens of the final attempt's prompt as reported by the endpoint (estimated if not)."""
    completion_tokens: int = 0
    model: str | None = None
    """Model name the endpoint says answered."""
    attempts: int = 1
    """Requests this answer took (retries and re-asks included)."""
    parsed: Any = field(default=None, compare=False)
    """What the ``parse`` callback returned, when one was given."""

    def message(self) -> Message:
        """The assistant turn to append to the conversation (needed before tool results)."""
        msg: Message = {"role": "assistant", "content": self.text or None}
        if self.tool_calls:
            msg["tool_calls"] = [call.to_dict() for call in self.tool_calls]
        return msg
