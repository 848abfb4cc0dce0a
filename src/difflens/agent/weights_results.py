"""A weight-space lens run as the agent reads it: which modules changed, and their readouts.

Only the difference is shown: module names (layer and kind, which carry no answer), the size of
each change, and the tokens its top singular vectors read out through the base model's
unembedding (the best sign first).  Model ids and paths are never put into the text.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from difflens.agent.results import Results
from difflens.methods.weights.result import WeightsResult

OVERVIEW_MODULES = 6
OVERVIEW_TOKENS = 20


def _toks(tokens: list[str], n: int) -> str:
    return ", ".join(json.dumps(t, ensure_ascii=False) for t in tokens[:n])


def _readout_lines(row: dict[str, Any], n_tokens: int) -> list[str]:
    lines = [f"module {row['module']} ({row.get('role', '')}):"]
    for vec in row.get("vectors", []):
        best = vec.get("best", "+")
        other = "-" if best == "+" else "+"
        lines.append(f"  singular vector {vec.get('index', 0)} (sigma {vec.get('sigma', 0):.3g}):"
                     f" {_toks(vec.get(best, {}).get('tokens', []), n_tokens)}")
        lines.append(f"    other sign: {_toks(vec.get(other, {}).get('tokens', []), 10)}")
    return lines


def weights_results(run_dir: Path | str) -> Results:
    """Overview and ``get_detail`` sections of a weight-space lens run (``difflens weights``)."""
    result = WeightsResult.load(run_dir)
    lines = ["Weight-space lens: the finetune's weight changes dW per linear module, read from "
             "the weights alone (no text). Tokens are the base model's logit-lens readouts of "
             "each changed module's top singular vectors (residual-stream side)."]
    if result.no_difference:
        lines.append("The weights do not differ: no module changed.")
    lines.append(f"Tokens recurring across the most changed modules: "
                 f"{_toks(result.top_tokens(OVERVIEW_TOKENS), OVERVIEW_TOKENS)}")
    lines.append("Most changed modules (|dW|_F, relative to |W|):")
    for row in result.top_modules[:OVERVIEW_MODULES]:
        lines.append(f"  {row.get('name') or row.get('module')}: {row.get('norm', 0):.3g} "
                     f"({100 * float(row.get('relative') or 0):.2f}%)")
    sections = {
        "readouts": "\n".join(line for row in result.readouts
                              for line in _readout_lines(row, OVERVIEW_TOKENS)),
        "modules": "\n".join(f"{row.get('name') or row.get('module')}: norm "
                             f"{row.get('norm', 0):.3g}, relative "
                             f"{float(row.get('relative') or 0):.3g}, stable rank "
                             f"{float(row.get('stable_rank') or 0):.3g}"
                             for row in result.top_modules),
    }
    lines += ["", f"Sections for get_detail: {', '.join(sections)}."]
    return Results("weights", "\n".join(lines), sections)
