"""Plain-text tool protocol, for endpoints without native tool calling.

Some local servers (older llama.cpp builds, small Ollama models) answer HTTP 400 when a request
carries ``tools``, or ignore them.  The agent then describes its tools in the prompt and reads
one action per answer:

    CALL <tool_name> {"arg": "value", ...}      one tool call; arguments are a JSON object
    FINAL: <description of the finetuning objective>

Free reasoning may precede the action line.  The first action line wins; anything after the JSON
object is ignored.  Tool results come back as a user message starting ``RESULT <tool_name>:``.
An answer with no action line, or with arguments that are not a JSON object, is answered with an
``ERROR:`` message that explains the format, and the agent may try again.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

_ACTION = re.compile(r"^[ \t>*`]*(CALL[ \t]+([A-Za-z_]\w*)|FINAL[ \t]*:)", re.M)


@dataclass(frozen=True)
class Action:
    """One parsed action: a tool call, a final answer, or an error to report back."""

    kind: str  # "call", "final" or "error"
    name: str = ""
    args: dict[str, Any] | None = None
    text: str = ""  # the final description, or the error message


def parse_action(reply: str) -> Action:
    """The first action in ``reply`` (see the module docstring for the format)."""
    match = _ACTION.search(reply or "")
    if match is None:
        return Action("error", text="no action found: end your answer with one line "
                                    "'CALL <tool> {json arguments}' or 'FINAL: <description>'")
    if match.group(2) is None:
        description = reply[match.end():].strip()
        if not description:
            return Action("error", text="FINAL: must be followed by the description")
        return Action("final", text=description)
    name = match.group(2)
    rest = reply[match.end():].lstrip()
    if not rest:
        return Action("call", name=name, args={})
    try:
        args, _end = json.JSONDecoder().raw_decode(rest)
    except json.JSONDecodeError as exc:
        return Action("error", name=name, text=f"arguments of {name} are not valid JSON ({exc})")
    if not isinstance(args, dict):
        return Action("error", name=name, text=f"arguments of {name} must be a JSON object")
    return Action("call", name=name, args=args)


def describe_tools(specs: list[dict[str, Any]]) -> str:
    """The tool list and the protocol, for the first prompt in text mode."""
    lines = ["You have these tools:"]
    for spec in specs:
        fn = spec["function"]
        params = ", ".join(f'"{k}": {v.get("type", "string")}'
                           for k, v in fn["parameters"]["properties"].items())
        lines.append(f"- {fn['name']} {{{params}}}: {fn['description']}")
    lines += ["", "Act with exactly one line per answer, after any reasoning:",
              'CALL <tool_name> {"argument": "value"}',
              "or, to finish:",
              "FINAL: <your description of what the model was finetuned for>",
              "Tool results come back as messages starting with RESULT."]
    return "\n".join(lines)


def format_result(name: str, text: str) -> str:
    return f"RESULT {name}:\n{text}"
