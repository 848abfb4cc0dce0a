"""The short text summary printed at the end of an ADL run."""

from __future__ import annotations

from typing import Any

from difflens.methods.adl.result import ADLSummary


def print_summary(summary: dict[str, Any] | ADLSummary) -> None:
    """Print the run's summary (the runner's return value, or an :class:`ADLSummary`)."""
    s = summary if isinstance(summary, ADLSummary) else ADLSummary.from_dict(summary)
    layer = s.layer
    print(f"\nADL  base={s.base}  finetuned={s.finetuned}")
    print(f"     {s.n_texts} texts × k={s.k} positions; "
          f"readout layer {layer}; run dir {s.run_dir}")
    if s.layer_choice is not None:
        print(f"     readout layer: {s.layer_choice.reason}")
    print("\n layer  ‖δ̄‖ per position (0=BOS … k-1)          ‖δ̄‖/ν_ft")
    for lay, brief in s.layers.items():
        norms = " ".join(f"{x:7.2f}" for x in brief.norm)
        mark = " <- readout" if lay == layer else ""
        print(f" {lay:>5}  {norms}   {brief.relative_norm:.3f}{mark}")
    info = s.layers[layer]
    if info.no_difference:
        print(f"\nlayer {layer}: no difference between the models (δ̄ ≈ 0); nothing to read.")
    else:
        tokens = ", ".join(repr(t.strip() or t) for t in info.top_tokens)
        print(f"\nlogit lens of δ̄ (positions 1..k-1) at layer {layer}, top 20:\n  {tokens}")
    if s.patchscope is not None:
        tokens = ", ".join(s.patchscope.tokens) or "(no coherent tokens)"
        print(f"\nPatchscope (scale {s.patchscope.scale}): {tokens}")
    if s.steering is not None:
        st = s.steering
        if st.found:
            example = " ".join(str(st.example or "").split())[:200]
            share = st.coherent_fraction
            coherent = "" if share is None else f" ({share:.0%} of the final samples coherent)"
            print(f"\nSteering: strongest coherent α = {st.alpha} ν_ft{coherent}; "
                  f"e.g. “{example}”")
        else:
            print(f"\nSteering: no coherent strength found ({st.reason})")
    if s.relevance is not None:
        rel = ", ".join(f"{k}: {v:.0%}" for k, v in s.relevance.items())
        print(f"\nToken relevance to the description: {rel}")
    if s.similarity is not None:
        sim = s.similarity
        st_ft, un_ft = sim.intervals["steered_finetune"], sim.intervals["unsteered_finetune"]
        print(f"\nSimilarity to finetune docs: steered {st_ft.mean:.3f} "
              f"[{st_ft.ci_low:.3f}, {st_ft.ci_high:.3f}] vs unsteered {un_ft.mean:.3f} "
              f"[{un_ft.ci_low:.3f}, {un_ft.ci_high:.3f}], p = {sim.p_value:.4f}")
        for c in sim.comparisons[1:]:
            print(f"  {c.model} model steered vs unsteered, similarity to {c.against}: "
                  f"{c.steered:.3f} vs {c.unsteered:.3f}, p = {c.p_value:.4f}")
    if s.causal is not None:
        parts = [f"{ds} ΔCE {v.delta_ce:+.4f}"
                 f"{' (outside random range)' if v.outside_random_range else ''}"
                 for ds, v in s.causal.items()]
        print(f"\nCausal effect of removing δ̄: {'; '.join(parts)}")
    for note in s.notes:
        print(f"\nnote: {note}")
    if s.report is not None:
        print(f"\nreport: {s.report}")
