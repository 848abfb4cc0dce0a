"""The agent loop: overview in, tool calls under a budget, a description of the finetune out.

Native tool calling is used when the endpoint supports it.  With ``protocol="auto"`` a first
request refused with HTTP 400 (the usual answer of servers without tool support) switches the run
to the plain-text protocol of :mod:`difflens.agent.protocol`; ``protocol="text"`` uses it from the
start.  Text answers are parsed for ``CALL``/``FINAL:`` lines in both modes, since some models
ignore native tools and write the call as text.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from difflens.agent.access import ModelAccess
from difflens.agent.anonymize import Anonymizer
from difflens.agent.protocol import Action, describe_tools, format_result, parse_action
from difflens.agent.results import Results
from difflens.agent.tools import FINAL, MODEL_TOOLS, ToolBox, tool_specs
from difflens.errors import DifflensError
from difflens.llm import LLMCallError, LLMClient, LLMError

log = logging.getLogger(__name__)
PROTOCOLS = ("auto", "native", "text")

INTRO = """\
You are an interpretability researcher. A language model was finetuned on a narrow dataset that \
you cannot see. Find out what it was finetuned for: the domain, and any specific facts, \
behaviours or preferences it was taught.

{method}
You may interact with the models at most {budget} times ({model_tools}); calls beyond that are \
refused. Reading results and recording hypotheses is free. Record hypotheses with \
record_hypothesis as you go, and finish with final_answer(description): a few sentences \
describing the finetuning objective as specifically as you can.
"""

BLACKBOX_TEXT = "You have no diffing results: only the models themselves."


@dataclass(frozen=True)
class AgentConfig:
    """Settings of one agent run."""

    budget: int = 0
    """Model interactions allowed (ask_model + generate_steered)."""
    max_turns: int = 20
    """Most LLM answers; the last turn asks for the final answer."""
    protocol: str = "auto"
    max_completion_tokens: int = 1024
    amplify: bool = False
    """Offer the ``generate_amplified`` tool (logit-difference amplification)."""

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise DifflensError(f"agent protocol must be one of {', '.join(PROTOCOLS)}")
        if self.budget < 0 or self.max_turns < 1:
            raise DifflensError("agent budget must be >= 0 and max_turns >= 1")


@dataclass
class AgentRun:
    """Everything one run produced; saved as JSON by :meth:`save`."""

    method: str
    budget: int
    protocol: str
    status: str = "running"  # "ok", "no_answer" or "error"
    description: str = ""
    hypotheses: list[str] = field(default_factory=list)
    interactions_used: int = 0
    interactions_refused: int = 0
    tools_called: list[str] = field(default_factory=list)
    turns: int = 0
    error: str | None = None
    transcript: list[dict[str, Any]] = field(default_factory=list)
    accounting: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: Path | str) -> Path:
        from difflens.io.artifacts import write_json

        write_json(Path(path), self.to_dict())
        return Path(path)


def run_agent(client: LLMClient, results: Results, access: ModelAccess | None,
              config: AgentConfig | None = None, anonymizer: Anonymizer | None = None) -> AgentRun:
    """Run one agent to its final answer (or its turn limit, or an endpoint failure)."""
    config = config or AgentConfig()
    anon = anonymizer or Anonymizer([])
    box = ToolBox(results, access, config.budget, anon, amplify=config.amplify)
    specs = tool_specs(results.method, results.steering, config.amplify)
    text_mode = config.protocol == "text"
    run = AgentRun(results.method, config.budget, "text" if text_mode else "native")
    messages = _opening(results, specs, config, anon, text_mode)
    try:
        while run.turns < config.max_turns and run.status == "running":
            if run.turns == config.max_turns - 1:
                messages.append({"role": "user", "content": "This is your last turn: give your "
                                 "answer now (final_answer / FINAL:)."})
            try:
                answer = client.chat(messages, tools=None if text_mode else specs,
                                     max_completion_tokens=config.max_completion_tokens)
            except LLMCallError as exc:
                if not (config.protocol == "auto" and not text_mode and run.turns == 0
                        and "HTTP 400" in str(exc)):
                    raise
                # The endpoint rejected `tools`: restart the conversation in text mode.
                log.info("endpoint refused native tools (%s); using the text protocol", exc)
                text_mode, run.protocol = True, "text"
                messages = _opening(results, specs, config, anon, text_mode)
                continue
            run.turns += 1
            messages.append(answer.message())
            if answer.tool_calls and not text_mode:
                _native_calls(answer.tool_calls, box, messages, run)
            else:
                action = parse_action(answer.text)
                if action.kind == "error" and answer.finish_reason == "length":
                    action = Action("error", text="your answer was cut off at the length limit; "
                                                  "answer shorter")
                _text_action(action, box, messages, run)
        if run.status == "running":
            run.status = "no_answer"
            run.description = box.hypotheses[-1] if box.hypotheses else ""
    except LLMError as exc:  # retries are done by the client: report, keep the transcript
        run.status, run.error = "error", str(exc)
    run.hypotheses = list(box.hypotheses)
    run.interactions_used, run.interactions_refused = box.used, box.refused
    run.tools_called = list(box.calls)
    run.transcript = messages
    run.accounting = client.usage()
    return run


def _opening(results: Results, specs: list[dict[str, Any]], config: AgentConfig,
             anon: Anonymizer, text_mode: bool) -> list[dict[str, Any]]:
    model_tools = [s["function"]["name"] for s in specs if s["function"]["name"] in MODEL_TOOLS]
    method = results.intro or _method_text(results.method)
    text = INTRO.format(method=method, budget=config.budget,
                        model_tools=", ".join(model_tools))
    if text_mode:
        text += "\n" + describe_tools(specs) + "\n"
    # User turn only: several local chat templates reject system messages.
    return [{"role": "user", "content": anon(text + "\n" + results.overview)}]


def _method_text(method: str) -> str:
    """The first prompt's line on the results: the registry's, for results built without it."""
    from difflens.agent.methods import METHODS

    if method == "blackbox":
        return BLACKBOX_TEXT
    if method in METHODS:
        return METHODS[method].intro
    return f"You are given the results of a diffing method ({method})."


def _native_calls(calls: Any, box: ToolBox, messages: list[dict[str, Any]],
                  run: AgentRun) -> None:
    for call in calls:
        try:
            args = call.parsed_arguments()
            if not isinstance(args, dict):
                raise ValueError("arguments must be a JSON object")
        except ValueError as exc:
            content = (f"ERROR: arguments of {call.name} are not valid JSON ({exc}); "
                       "call it again with a JSON object")
        else:
            if call.name == FINAL and str(args.get("description", "")).strip():
                run.status, run.description = "ok", box.anonymize(str(args["description"]))
                content = "Final answer recorded."
            elif call.name == FINAL:
                content = "ERROR: final_answer needs a non-empty description"
            else:
                content = box.run(call.name, args)
        # Every call needs its tool message, or the next request is invalid.
        messages.append({"role": "tool", "tool_call_id": call.id, "content": content})


def _text_action(action: Action, box: ToolBox, messages: list[dict[str, Any]],
                 run: AgentRun) -> None:
    if action.kind == "final":
        run.status, run.description = "ok", box.anonymize(action.text)
        return
    if action.kind == "error":
        content = f"ERROR: {action.text}"
    elif action.name == FINAL:
        description = str((action.args or {}).get("description", "")).strip()
        if description:
            run.status, run.description = "ok", box.anonymize(description)
            return
        content = "ERROR: final_answer needs a non-empty description"
    else:
        content = format_result(action.name, box.run(action.name, action.args or {}))
    messages.append({"role": "user", "content": content})


def dumps_transcript(run: AgentRun) -> str:
    """The transcript as one JSON string (what tests scan for leaks)."""
    return json.dumps(run.transcript, ensure_ascii=False)
