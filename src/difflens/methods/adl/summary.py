"""The short text summary printed at the end of an ADL run."""

from __future__ import annotations

from typing import Any


def print_summary(summary: dict[str, Any]) -> None:
    layer = str(summary["layer"])
    print(f"\nADL  base={summary['base']}  finetuned={summary['finetuned']}")
    print(f"     {summary['n_texts']} texts × k={summary['k']} positions; "
          f"readout layer {layer}; run dir {summary['run_dir']}")
    choice = summary.get("layer_choice")
    if choice:
        print(f"     readout layer: {choice['reason']}")
    print("\n layer  ‖δ̄‖ per position (0=BOS … k-1)          ‖δ̄‖/ν_ft")
    for lay, info in summary["layers"].items():
        norms = " ".join(f"{x:7.2f}" for x in info["norm"])
        mark = " <- readout" if lay == layer else ""
        print(f" {int(lay):>5}  {norms}   {info['relative_norm']:.3f}{mark}")
    info = summary["layers"][layer]
    if info["no_difference"]:
        print(f"\nlayer {layer}: no difference between the models (δ̄ ≈ 0); nothing to read.")
    else:
        tokens = ", ".join(repr(t.strip() or t) for t in info["top_tokens"])
        print(f"\nlogit lens of δ̄ (positions 1..k-1) at layer {layer}, top 20:\n  {tokens}")
    if "patchscope" in summary:
        ps = summary["patchscope"]
        tokens = ", ".join(ps["tokens"]) or "(no coherent tokens)"
        print(f"\nPatchscope (scale {ps['scale']}): {tokens}")
    if "steering" in summary:
        st = summary["steering"]
        if st.get("found"):
            example = " ".join(str(st.get("example", "")).split())[:200]
            share = st.get("coherent_fraction")
            coherent = "" if share is None else f" ({share:.0%} of the final samples coherent)"
            print(f"\nSteering: strongest coherent α = {st['alpha']} ν_ft{coherent}; "
                  f"e.g. “{example}”")
        else:
            print(f"\nSteering: no coherent strength found ({st.get('reason')})")
    if "relevance" in summary:
        rel = ", ".join(f"{k}: {v:.0%}" for k, v in summary["relevance"].items())
        print(f"\nToken relevance to the description: {rel}")
    if "similarity" in summary:
        sim = summary["similarity"]
        s, u = sim["steered_finetune"], sim["unsteered_finetune"]
        print(f"\nSimilarity to finetune docs: steered {s['mean']:.3f} "
              f"[{s['ci_low']:.3f}, {s['ci_high']:.3f}] vs unsteered {u['mean']:.3f} "
              f"[{u['ci_low']:.3f}, {u['ci_high']:.3f}], p = {sim['p_value']:.4f}")
        for c in sim.get("comparisons", [])[1:]:
            print(f"  {c['model']} model steered vs unsteered, similarity to {c['against']}: "
                  f"{c['steered']:.3f} vs {c['unsteered']:.3f}, p = {c['p_value']:.4f}")
    if "causal" in summary:
        parts = [f"{ds} ΔCE {v['delta_ce']:+.4f}"
                 f"{' (outside random range)' if v['outside_random_range'] else ''}"
                 for ds, v in summary["causal"].items()]
        print(f"\nCausal effect of removing δ̄: {'; '.join(parts)}")
    for note in summary.get("notes", []):
        print(f"\nnote: {note}")
    if "report" in summary:
        print(f"\nreport: {summary['report']}")
