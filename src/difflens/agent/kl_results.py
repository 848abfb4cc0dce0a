"""A per-token KL run as the agent reads it: an overview up front and sections on request.

Only readouts of the difference are shown: the tokens that carry the divergence (both signs),
the contexts where the two models' next-token distributions differ most (peak token marked
⟦ ⟧, with each model's most likely next token), and the activation-norm contexts.  Model ids,
paths and the run directory are never put into the text (``agent/results.py``'s rule).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from difflens.agent.results import Results
from difflens.methods.kl.result import KLResult
from difflens.methods.kl.summary import context_text, stat_label

OVERVIEW_TOKENS = 20
OVERVIEW_CONTEXTS = 5


def _toks(tokens: list[str], n: int) -> str:
    return ", ".join(json.dumps(t, ensure_ascii=False) for t in tokens[:n])


def _context_lines(rows: list[dict[str, Any]], n: int | None) -> list[str]:
    return [f"  {row['score']:.3f}: …{context_text(row)} (finetuned predicts "
            f"{json.dumps(row['ft_next'], ensure_ascii=False)}, base predicts "
            f"{json.dumps(row['base_next'], ensure_ascii=False)})" for row in rows[:n]]


def _fingerprint_rows(rows: list[dict[str, Any]]) -> str:
    return "\n".join(f"{json.dumps(r['token'], ensure_ascii=False)}: share "
                     f"{100 * r['share']:+.2f}% of the KL, mean p finetuned "
                     f"{r['mean_p_ft']:.3g} vs base {r['mean_p_base']:.3g}" for r in rows)


def kl_results(run_dir: Path | str) -> Results:
    """Overview and ``get_detail`` sections of a per-token KL run (``difflens kl`` output)."""
    res = KLResult.load(run_dir)
    label = stat_label(res.divergence)
    lines = [f"Per-token KL: both models read {res.n_texts} unrelated texts "
             f"({res.n_positions} positions); at each position the divergence of their "
             "next-token distributions was measured."]
    if res.no_difference:
        lines.append("The models do not differ: the KL is exactly 0 everywhere.")
        return Results("kl", "\n".join(lines), {})
    fwd = res.stats.get("forward", {})
    if fwd:
        lines.append(f"Mean KL(finetuned‖base) {fwd['mean']:.4f} nats, median "
                     f"{fwd['quantiles']['0.5']:.4f}, max {fwd['max']:.3f}.")
    sections: dict[str, str] = {}
    fp = res.fingerprint
    if fp:
        lines += ["", "Tokens the finetuned model moves probability onto (largest share of the "
                      f"total KL first): {_toks(res.fingerprint_tokens(OVERVIEW_TOKENS), 99)}",
                  "Tokens it takes probability from: "
                  f"{_toks(res.fingerprint_tokens(10, 'bottom'), 99)}"]
        sections["fingerprint"] = _fingerprint_rows(fp["top"])
        sections["fingerprint_negative"] = _fingerprint_rows(fp["bottom"])
    rows = res.contexts()
    if rows:
        lines += ["", f"Contexts with the highest {label} (peak token in ⟦ ⟧):"]
        lines += _context_lines(rows, OVERVIEW_CONTEXTS)
        sections["contexts"] = "\n".join(_context_lines(rows, None))
    for layer in res.layers:
        name = f"norm_{layer}"
        if res.contexts(name):
            sections[f"norm_layer_{layer}"] = (
                f"Contexts where the activations differ most at layer {layer} "
                "(‖h_finetuned − h_base‖):\n" + "\n".join(_context_lines(res.contexts(name),
                                                                          None)))
    lines += ["", f"Sections for get_detail: {', '.join(sections)}."]
    return Results("kl", "\n".join(lines), sections)
