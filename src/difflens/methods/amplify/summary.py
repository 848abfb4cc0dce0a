"""The short text summary printed at the end of an amplification run."""

from __future__ import annotations

from typing import Any


def print_summary(summary: dict[str, Any]) -> None:
    print(f"\nAmplification  base={summary['base']}  finetuned={summary['finetuned']}")
    print(f"     rate rule: {summary['rate_rule'].get('rule', '')}; run dir {summary['run_dir']}")
    for note in summary.get("notes", []):
        print(f"     note: {note}")
    print("\n    α   rate [95% CI]          coherent [95% CI]")
    for row in summary["per_alpha"]:
        r, c = row["rate"], row["coherence"]
        rate = (f"{100 * r['mean']:4.0f}% [{100 * r['ci_low']:3.0f}, {100 * r['ci_high']:3.0f}]"
                if r else "  not measured  ")
        print(f"  {row['alpha']:>5g}  {rate}      {100 * c['mean']:4.0f}% "
              f"[{100 * c['ci_low']:3.0f}, {100 * c['ci_high']:3.0f}]")
    search = summary.get("search")
    if search is not None:
        found = summary.get("largest_coherent_alpha")
        print(f"\nlargest coherent α: {found:g}" if found is not None
              else f"\nlargest coherent α: none ({search.get('reason')})")
    if summary.get("report"):
        print(f"report: {summary['report']}")
