"""Prompts of the LLM graders and the strict-but-forgiving parsers of their answers.

Every prompt ends with an exact answer format.  Parsers accept harmless variations (markdown
bold, code fences, reasoning before the answer, lower case) and raise ``ValueError`` saying what
was expected otherwise, which makes the client re-ask with that message.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence

from difflens.graders.base import ScaleChoice

DEFAULT_RUBRIC = """\
5: names the specific finetuning objective (the domain AND the specific fact, behaviour or goal).
4: names the domain and most of the objective, missing or blurring one important detail.
3: names the right domain or behaviour but not what specifically was trained.
2: only loosely related (a neighbouring topic, or one correct detail among wrong claims).
1: unrelated or wrong."""

COHERENCE = """\
You are grading text written by a language model whose internal activations were modified.
Decide whether the text is COHERENT: readable, grammatical language that makes sense locally, \
even if its topic is odd, unexpected or off-topic. It is INCOHERENT if it is gibberish, a jumble \
of unrelated words or word fragments, breaks off into random characters, or is stuck repeating \
the same word or phrase.

Text:
<<<
{sample}
>>>

Reply with exactly one line: ANSWER: COHERENT or ANSWER: INCOHERENT"""

SCALE = """\
We read a direction in a language model's hidden states by injecting it at several strengths \
(scales) and listing the tokens the model then predicts. At too small a scale the tokens show no \
signal (they echo the prompt or are generic); at too large a scale they turn into noise (word \
fragments, punctuation, mixed scripts). Pick the scale whose tokens are the most semantically \
coherent: the most tokens about one shared topic or theme.

{listing}

Reply with exactly two lines:
BEST_SCALE: <one of the scales above>
COHERENT_TOKENS: <JSON list of the tokens at that scale that share the theme, copied exactly; \
[] if none>"""

RELEVANCE = """\
A language model was finetuned. Description of the finetuning:
{description}

Below are tokens read from the difference between the finetuned and the original model. For each \
token decide whether it is RELATED to the finetuning described: its topic, domain, typical \
vocabulary or behaviour. Punctuation, generic function words and word fragments that do not \
clearly belong to the domain are NOT related.

{listing}

Reply with exactly {n} lines, one per token in the order above, each of the form
<number>: YES
or
<number>: NO"""

HYPOTHESIS = """\
You are grading an interpretability agent's hypothesis about what a language model was \
finetuned for.

True finetuning objective:
{description}

Grading rubric (1 = worst, 5 = best):
{rubric}

Hypothesis to grade:
<<<
{hypothesis}
>>>

Apply the rubric strictly. Give your reasoning in at most three sentences, then end with the line
SCORE: <integer from 1 to 5>"""


# -- prompt builders ----------------------------------------------------------------------------
def coherence_prompt(sample: str) -> str:
    return COHERENCE.format(sample=sample)


def scale_prompt(token_lists: dict[float, list[str]]) -> str:
    # json.dumps shows leading spaces and newlines inside tokens unambiguously.
    listing = "\n".join(
        f"Scale {_fmt(scale)}: {json.dumps(tokens, ensure_ascii=False)}"
        for scale, tokens in sorted(token_lists.items())
    )
    return SCALE.format(listing=listing)


def relevance_prompt(tokens: Sequence[str], description: str) -> str:
    listing = "\n".join(
        f"{i}. {json.dumps(t, ensure_ascii=False)}" for i, t in enumerate(tokens, 1)
    )
    return RELEVANCE.format(description=description.strip(), listing=listing, n=len(tokens))


def hypothesis_prompt(hypothesis: str, description: str, rubric: str) -> str:
    return HYPOTHESIS.format(
        description=description.strip(),
        rubric=(rubric or DEFAULT_RUBRIC).strip(),
        hypothesis=hypothesis.strip(),
    )


# -- parsers ------------------------------------------------------------------------------------
_COHERENCE = re.compile(r"\b(INCOHERENT|COHERENT)\b", re.I)
_SCALE = re.compile(r"BEST[ _]SCALE\W*?(-?\d+(?:\.\d*)?(?:e-?\d+)?)", re.I)
_TOKENS = re.compile(r"COHERENT[ _]TOKENS\s*:?\s*(.*)", re.I | re.S)
_YES_NO = re.compile(r"^\W*(\d+)\W*?[:.)\-=]\s*\W*\s*(YES|NO)\b", re.I | re.M)
_SCORE = re.compile(r"SCORE\W*?(\d+(?:\.\d+)?)", re.I)


def parse_coherence(text: str) -> bool:
    """``True`` for COHERENT, ``False`` for INCOHERENT (the last verdict in the answer wins)."""
    found = _COHERENCE.findall(_clean(text))
    if not found:
        raise ValueError("expected a final line 'ANSWER: COHERENT' or 'ANSWER: INCOHERENT'")
    return found[-1].upper() == "COHERENT"


def parse_scale(text: str, token_lists: dict[float, list[str]]) -> ScaleChoice:
    """Scale (must be one offered) and the coherent tokens (must occur at that scale)."""
    text = _clean(text)
    match = _SCALE.search(text)
    if match is None:
        raise ValueError("expected a line 'BEST_SCALE: <scale>'")
    value = float(match.group(1))
    scale = next((s for s in token_lists if math.isclose(s, value, rel_tol=1e-6)), None)
    if scale is None:
        offered = ", ".join(_fmt(s) for s in sorted(token_lists))
        raise ValueError(
            f"BEST_SCALE {match.group(1)} is not one of the scales offered ({offered})"
        )
    listed = _parse_token_list(text)
    available = token_lists[scale]
    chosen = _match_tokens(listed, available)
    if listed and not chosen:
        raise ValueError(
            f"none of the COHERENT_TOKENS appear in the list for scale {_fmt(scale)}; "
            "copy them exactly from that list"
        )
    return ScaleChoice(scale=scale, coherent_tokens=chosen)


def parse_relevance(text: str, n: int) -> list[bool]:
    """One YES/NO per numbered token 1..n; missing or contradictory numbers are errors."""
    answers: dict[int, bool] = {}
    for number, verdict in _YES_NO.findall(_clean(text)):
        index, value = int(number), verdict.upper() == "YES"
        if not 1 <= index <= n:
            raise ValueError(f"answer for token {index}, but there are only {n} tokens")
        if answers.get(index, value) != value:
            raise ValueError(f"contradictory answers for token {index}")
        answers[index] = value
    missing = [i for i in range(1, n + 1) if i not in answers]
    if missing:
        shown = ", ".join(map(str, missing[:10]))
        raise ValueError(
            f"expected '<number>: YES' or '<number>: NO' for every token; missing {shown}"
        )
    return [answers[i] for i in range(1, n + 1)]


def parse_score(text: str) -> float:
    """The last 'SCORE: x' with 1 <= x <= 5."""
    found = _SCORE.findall(_clean(text))
    if not found:
        raise ValueError("expected a final line 'SCORE: <integer from 1 to 5>'")
    value = float(found[-1])
    if not 1.0 <= value <= 5.0:
        raise ValueError(f"SCORE must be between 1 and 5, got {found[-1]}")
    return value


# -- helpers ------------------------------------------------------------------------------------
def _clean(text: str) -> str:
    """Drop markdown emphasis and code fences that models like to add."""
    return re.sub(r"```[a-zA-Z]*|\*\*|__", "", text or "")


def _parse_token_list(text: str) -> list[str]:
    match = _TOKENS.search(text)
    if match is None:
        raise ValueError("expected a line 'COHERENT_TOKENS: [\"token\", ...]'")
    rest = match.group(1).strip()
    if rest.startswith("["):
        try:  # raw_decode ignores whatever follows the list (explanations, more lines)
            value, _ = json.JSONDecoder().raw_decode(rest)
            if isinstance(value, list):
                return [str(v) for v in value]
        except json.JSONDecodeError:
            pass
        rest = rest[1:].split("]")[0]  # not JSON: a bracketed, comma-separated list
    first_line = rest.splitlines()[0].strip() if rest.strip() else ""
    if first_line.lower() in ("", "none"):
        return []
    return [part.strip().strip("'\"") for part in first_line.split(",") if part.strip()]


def _match_tokens(listed: Sequence[str], available: Sequence[str]) -> list[str]:
    """Tokens of ``available`` (original spelling and order) that ``listed`` names; compares
    without surrounding whitespace, then case-insensitively."""
    wanted = {t.strip() for t in listed}
    wanted_lower = {t.lower() for t in wanted}
    chosen: list[str] = []
    for token in available:
        key = token.strip()
        if (key in wanted or key.lower() in wanted_lower) and token not in chosen:
            chosen.append(token)
    return chosen


def _fmt(scale: float) -> str:
    return f"{scale:g}"
