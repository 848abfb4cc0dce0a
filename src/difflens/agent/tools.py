"""The agent's tools: their specs (OpenAI function format) and their execution.

Model interactions (``ask_model``, ``generate_steered``) draw on a budget of ``budget`` calls.
A call beyond it is refused — not executed — and the refusal is the tool result, so the agent
learns it and can answer.  Every result passes through the anonymizer before the agent sees it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from difflens.agent.access import SIDES, ModelAccess
from difflens.agent.results import Results
from difflens.errors import DifflensError

MODEL_TOOLS = ("ask_model", "generate_steered", "generate_amplified")
FINAL = "final_answer"


def _spec(name: str, doc: str, **props: dict[str, Any]) -> dict[str, Any]:
    return {"type": "function", "function": {
        "name": name, "description": doc,
        "parameters": {"type": "object", "properties": props,
                       "required": [k for k, v in props.items() if not v.pop("optional", False)]},
    }}


def tool_specs(method: str, steering: bool | None = None,
               amplify: bool = False) -> list[dict[str, Any]]:
    """Specs of the tools an agent of ``method`` ("adl", "mining", "adl+mining", "blackbox",
    ...) gets; ``generate_steered`` with ``steering`` (default: ``method == "adl"``);
    ``generate_amplified`` with ``amplify`` (it needs only the two models' logits, so the
    black-box agent may have it too)."""
    if steering is None:
        steering = method == "adl"
    specs = []
    if method != "blackbox":
        specs.append(_spec("get_detail", "Read one section of the diffing results in full.",
                           section={"type": "string", "description": "section name"}))
    specs.append(_spec("ask_model", "Ask a model a question; greedy answer. Costs 1 interaction.",
                       question={"type": "string"},
                       model={"type": "string", "enum": list(SIDES), "optional": True}))
    if steering:
        specs.append(_spec(
            "generate_steered", "Answer of the finetuned model steered along the activation "
            "difference at this strength (typical 0.5-4). Costs 1 interaction.",
            prompt={"type": "string"}, strength={"type": "number"}))
    if amplify:
        specs.append(_spec(
            "generate_amplified", "Answer sampled greedily from the finetuned model with its "
            "difference from the base model amplified: next-token logits (1+alpha)*z_finetuned "
            "- alpha*z_base. alpha 0 is the finetuned model itself; typical 1-4 (larger makes "
            "rare finetune behaviour frequent, and text less coherent). Costs 1 interaction.",
            prompt={"type": "string"}, alpha={"type": "number"}))
    specs.append(_spec("record_hypothesis", "Write a hypothesis in your log (free).",
                       text={"type": "string"}))
    specs.append(_spec(FINAL, "Finish with a description of what the model was finetuned for.",
                       description={"type": "string"}))
    return specs


@dataclass
class ToolBox:
    """Executes tool calls for one agent run and keeps its budget and hypothesis log."""

    results: Results
    access: ModelAccess | None
    budget: int
    anonymize: Callable[[str], str] = str
    used: int = 0
    refused: int = 0
    hypotheses: list[str] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)
    """Names of the tools called, in order (final_answer excluded): the run's evidence trail."""
    names: tuple[str, ...] = ()
    amplify: bool = False
    """Offer ``generate_amplified`` (logit-difference amplification)."""

    def __post_init__(self) -> None:
        specs = tool_specs(self.results.method, self.results.steering, self.amplify)
        self.names = tuple(s["function"]["name"] for s in specs)

    def run(self, name: str, args: dict[str, Any]) -> str:
        """The (anonymized) result text of one call; errors become results the agent reads."""
        self.calls.append(name)
        return self.anonymize(self._run(name, args))

    def _run(self, name: str, args: dict[str, Any]) -> str:
        if name not in self.names or name == FINAL:
            return f"ERROR: unknown tool {name!r}; available: {', '.join(self.names)}"
        try:
            if name == "get_detail":
                return self.results.detail(str(args["section"]))
            if name == "record_hypothesis":
                self.hypotheses.append(self.anonymize(str(args["text"])))
                return f"Hypothesis {len(self.hypotheses)} recorded."
            if self.used >= self.budget:  # refused BEFORE touching the model
                self.refused += 1
                return (f"REFUSED: the budget of {self.budget} model interactions is used up; "
                        "this call was not executed. Use what you have and call final_answer.")
            if self.access is None:
                return "ERROR: no model is available in this evaluation."
            self.used += 1
            if name == "ask_model":
                side = str(args.get("model") or "finetuned")
                answer = self.access.ask(str(args["question"]), side)
                return f"[{side} model] {answer}"
            if name == "generate_amplified":
                alpha = float(args["alpha"])
                answer = self.access.amplify(str(args["prompt"]), alpha)
                return f"[amplified finetuned model, alpha {alpha:g}] {answer}"
            answer = self.access.steer(str(args["prompt"]), float(args["strength"]))
            return f"[steered finetuned model, strength {args['strength']}] {answer}"
        except KeyError as exc:
            return f"ERROR: missing argument {exc} for {name}; call it again with all arguments."
        except (TypeError, ValueError) as exc:
            return f"ERROR: bad argument for {name} ({exc}); call it again."
        except DifflensError as exc:
            return f"ERROR: {exc}"

    def remaining(self) -> int:
        return max(self.budget - self.used, 0)
