"""Diffing results as the agent reads them: an overview up front and sections on request.

Only readouts of the difference are shown (tokens, topics, steered/unsteered samples).  Fields
that carry the answer (the organism's description, relevance verdicts graded against it) or
where it came from (paths, model ids) are never put into the text, so they cannot leak.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from difflens.errors import DifflensError
from difflens.methods.adl.records import LayerLens, SteeringSamples
from difflens.methods.adl.result import ADLResult
from difflens.methods.mining.result import MiningResult

MAX_SECTION_CHARS = 6000  # keeps one tool result well inside small models' context


@dataclass
class Results:
    """What one agent may read: the overview text and named detail sections."""

    method: str
    overview: str
    sections: dict[str, str] = field(default_factory=dict)
    intro: str = ""
    """What these results are, for the agent's first prompt ("" = the method's own line)."""
    steering: bool = False
    """A difference vector comes with them: the agent gets ``generate_steered``."""

    def detail(self, section: str) -> str:
        if section not in self.sections:
            # Combined results prefix sections by method ("adl.steering"); the bare name is
            # accepted when only one method has it.
            matches = [k for k in self.sections if k.endswith(f".{section}")]
            if len(matches) != 1:
                raise DifflensError(f"unknown section {section!r}; available: "
                                    f"{', '.join(self.sections) or 'none'}")
            section = matches[0]
        text = self.sections[section]
        return text if len(text) <= MAX_SECTION_CHARS else text[:MAX_SECTION_CHARS] + "\n[...]"


def blackbox_results() -> Results:
    return Results("blackbox", "No diffing results are available for this model. You can only "
                               "learn about the finetune by asking the models.")


def _toks(tokens: list[str], n: int = 20) -> str:
    return ", ".join(json.dumps(t, ensure_ascii=False) for t in tokens[:n])


def adl_results(run_dir: Path | str) -> Results:
    """Overview and sections of an ADL run directory (``difflens adl`` output)."""
    result = ADLResult.load(run_dir)
    layer, info = result.layer, result.readout()
    lines = [f"Activation Difference Lens: mean activation difference (finetuned - base) on the "
             f"first {len(info.positions)} tokens of unrelated web text, read at layer {layer}.",
             "", "Logit lens of the difference, top tokens per position:"]
    for j, row in enumerate(info.positions):
        lines.append(f"  position {j}: {_toks(row.tokens)}")
    lines.append(f"  mean of positions 1+: {_toks(info.mean.tokens)}")
    sections = {"logit_lens": _lens_section(result.lens)}
    patch = result.patchscope
    if patch is not None and patch.chosen is not None:
        chosen = patch.chosen
        lines += ["", f"Patchscope (scale {chosen.scale}): coherent tokens "
                      f"{_toks(chosen.coherent_tokens)}",
                  f"  all top tokens: {_toks(chosen.tokens)}"]
        sections["patchscope"] = "\n".join(
            f"scale {row.scale}: {_toks(row.tokens, 40)}" for row in patch.scales)
    steer = result.steering
    if steer is not None and steer.samples.steered:
        lines += ["", f"Steering the finetuned model with the difference (strength "
                      f"{steer.alpha}): steered vs unsteered answers"]
        lines += _samples(steer.samples, limit=3)
        sections["steering"] = "\n".join(_samples(steer.samples, limit=None))
    lines += ["", f"Sections for get_detail: {', '.join(sections)}."]
    return Results("adl", "\n".join(lines), sections, steering=True)


def _lens_section(lens: dict[int, LayerLens]) -> str:
    out = []
    for layer, info in lens.items():
        out.append(f"layer {layer}: mean {_toks(info.mean.tokens, 30)}")
        out.append(f"  negative direction: {_toks(info.negative.tokens, 15)}")
    return "\n".join(out)


def _samples(samples: SteeringSamples, limit: int | None) -> list[str]:
    steered, unsteered = samples.steered, samples.unsteered
    rows = []
    for i, prompt in enumerate(samples.prompts[:limit]):
        rows.append(f"  Prompt: {prompt}")
        if i < len(steered):
            rows.append(f"    steered: {steered[i]}")
        if i < len(unsteered):
            rows.append(f"    unsteered: {unsteered[i]}")
    return rows


def mining_results(run_dir: Path | str) -> Results:
    """Overview and sections of a Diff Mining run directory (``difflens mine`` output)."""
    result = MiningResult.load(run_dir)
    promoted = [r["token"] for r in result.promoted]
    suppressed = [r["token"] for r in result.suppressed or []]
    lines = ["Diff Mining: tokens whose logit the finetune raises most often on unrelated text.",
             f"Most promoted tokens: {_toks(promoted)}",
             f"Most suppressed tokens: {_toks(suppressed, 10)}"]
    sections = {"promoted": _toks(promoted, 100), "suppressed": _toks(suppressed, 100)}
    topics = (result.topics or {}).get("topics") or []
    if topics:
        lines.append("Token groups (NMF topics):")
        lines += [f"  group {t['topic']}: {_toks(t['tokens'], 12)}" for t in topics]
        sections["topics"] = "\n".join(f"group {t['topic']}: {_toks(t['tokens'], 40)}"
                                        for t in topics)
    examples = result.examples or []
    if examples:
        sections["examples"] = "\n".join(
            f"{e['token']}: " + " | ".join(x.get("context", "") for x in e["examples"][:3])
            for e in examples)
    lines += ["", f"Sections for get_detail: {', '.join(sections)}."]
    return Results("mining", "\n".join(lines), sections)
