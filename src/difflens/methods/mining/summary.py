"""The short text summary printed at the end of a Diff Mining run."""

from __future__ import annotations

from typing import Any


def _fmt(rows: list[dict[str, Any]], n: int) -> str:
    return "\n".join(f"  {i + 1:>3}. {row['token']!r:<22} {row['rate']:7.2f}%   "
                     f"mean Δ {row['avg_diff']:+.3f}" for i, row in enumerate(rows[:n]))


def print_summary(summary: dict[str, Any]) -> None:
    lens = summary["lens"] + ("" if summary["lens"] == "raw" else f" @ layer {summary['layer']}")
    print(f"\nDiff Mining  base={summary['base']}  finetuned={summary['finetuned']}")
    print(f"     {summary['n_texts']} texts, {summary['n_positions']} positions; lens {lens}; "
          f"K={summary['top_k']} of {summary['vocab']} tokens; run dir {summary['run_dir']}")
    if summary["no_difference"]:
        print("\nno difference between the models (max |Δ| = "
              f"{summary['max_abs_delta']:.2e}); nothing is promoted or suppressed.")
        return
    print("\npromoted (Top-K occurrence rate, % of positions):")
    print(_fmt(summary["promoted"], 20))
    print("\nsuppressed:")
    print(_fmt(summary["suppressed"], 10))
    topics = summary.get("topics") or {}
    if topics.get("topics"):
        print("\nNMF topics (prevalence: tokens):")
        for topic in topics["topics"]:
            tokens = ", ".join(repr(t.strip() or t) for t in topic["tokens"][:10])
            print(f"  {topic['topic']}  {100 * topic['prevalence']:5.1f}%: {tokens}")
    elif topics.get("skipped"):
        print(f"\nNMF skipped: {topics['skipped']}")
    if summary.get("relevance"):
        rel = summary["relevance"]
        print(f"\ntoken relevance: {100 * rel['fraction']:.0f}% of the top "
              f"{len(rel['tokens'])} tokens relate to the finetune")
    for group in summary["examples"][:3]:
        for ex in group["examples"][:1]:
            print(f"\nexample for {group['token']!r} (Δ {ex['delta']:+.2f}): "
                  f"…{ex['context'][-80:]!r} → {ex['promoted']!r}")
