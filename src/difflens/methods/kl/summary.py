"""The short text summary printed at the end of a per-token KL run."""

from __future__ import annotations

from typing import Any

LABELS = {"forward": "KL(ft‖base)", "reverse": "KL(base‖ft)", "symmetric": "symmetric KL"}


def stat_label(name: str) -> str:
    """``forward`` → ``KL(ft‖base)``, ``norm_7`` → ``‖Δh‖ @ layer 7``."""
    if name.startswith("norm_"):
        return f"‖h_ft − h_base‖ @ layer {name[5:]}"
    return LABELS.get(name, name)


def context_text(row: dict[str, Any], width: int = 90) -> str:
    """The window's text with the peak token in ⟦ ⟧, cut to about ``width`` characters."""
    tokens = row["tokens"]
    peak = row["peak"]
    before = "".join(tokens[:peak])[-width:]
    after = "".join(tokens[peak + 1:])[: width // 3]
    return f"{before}⟦{tokens[peak]}⟧{after}".replace("\n", "⏎")


def print_summary(summary: dict[str, Any]) -> None:
    print(f"\nPer-token KL  base={summary['base']}  finetuned={summary['finetuned']}")
    print(f"     {summary['n_texts']} texts, {summary['n_positions']} positions, "
          f"{summary['vocab']} shared tokens; run dir {summary['run_dir']}")
    if summary.get("vocab_note"):
        print(f"     note: {summary['vocab_note']}")
    if summary["no_difference"]:
        print("\nno difference between the models: KL is exactly 0 at every position and the "
              "activations are identical at the measured layers.")
        return
    print()
    for name, row in summary["stats"].items():
        q = row["quantiles"]
        print(f"  {stat_label(name):<28} mean {row['mean']:.4g}  median {q['0.5']:.4g}  "
              f"p99 {q['0.99']:.4g}  max {row['max']:.4g}")
    fp = summary.get("fingerprint")
    if fp:
        tops = ", ".join(f"{r['token']!r} {100 * r['share']:.1f}%" for r in fp["top"][:15])
        print(f"\ntokens carrying the divergence (share of the total KL): {tops}")
        lows = ", ".join(repr(r["token"]) for r in fp["bottom"][:8])
        print(f"most negative contributions: {lows}")
    rows = summary["top_contexts"].get(summary["divergence"], [])
    if rows:
        print(f"\nhighest {stat_label(summary['divergence'])} contexts:")
    for row in rows[:5]:
        print(f"  {row['score']:7.3f}  …{context_text(row)!s}  "
              f"(ft → {row['ft_next']!r}, base → {row['base_next']!r})")
    if summary.get("report"):
        print(f"\nreport: {summary['report']}")
