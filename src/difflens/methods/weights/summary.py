"""The short text summary printed at the end of a weight-space lens run."""

from __future__ import annotations

from typing import Any

from difflens.methods.weights.result import WeightsResult


def print_summary(summary: dict[str, Any]) -> None:
    res = WeightsResult.from_dict(summary)
    print(f"\nWeight-space lens  base={res.base}  finetuned={res.finetuned}  ({res.method})")
    print(f"     {res.n_modules} linear modules, {res.n_changed} changed; run dir {res.run_dir}")
    for note in res.notes:
        print(f"note: {note}")
    if res.no_difference:
        print("\nno difference between the models: ΔW = 0 in every module.")
        return
    print(f"\ntop modules (by {res.rank_by}):   ‖ΔW‖_F  ‖ΔW‖/‖W‖   σ1      stable rank")
    for row in res.top_modules[:10]:
        rel = row.get("relative")
        print(f"  {row['name']:<40} {row['norm']:8.4f} {rel or 0.0:9.4f} "
              f"{row['sigma'][0] if row['sigma'] else 0.0:8.4f} {row['stable_rank']:6.2f}")
    print("\nreadouts (σ1, best sign):")
    for row in res.readouts[:6]:
        v = row["vectors"][0]
        tokens = ", ".join(repr(t) for t in v[v["best"]]["tokens"][:8])
        print(f"  {row['module']:<40} {v['best']}  {tokens}")
    print("\ntokens recurring across modules: " + ", ".join(repr(t) for t in res.top_tokens(20)))
    if res.report:
        print(f"\nreport: {res.report}")
