"""The short text summary printed at the end of an ADL run."""

from __future__ import annotations

from typing import Any


def print_summary(summary: dict[str, Any]) -> None:
    layer = str(summary["layer"])
    print(f"\nADL  base={summary['base']}  finetuned={summary['finetuned']}")
    print(f"     {summary['n_texts']} texts × k={summary['k']} positions; "
          f"readout layer {layer}; run dir {summary['run_dir']}")
    print("\n layer  ‖δ̄‖ per position (0=BOS … k-1)          ‖δ̄‖/ν_ft")
    for lay, info in summary["layers"].items():
        norms = " ".join(f"{x:7.2f}" for x in info["norm"])
        mark = " <- readout" if lay == layer else ""
        print(f" {int(lay):>5}  {norms}   {info['relative_norm']:.3f}{mark}")
    info = summary["layers"][layer]
    if info["no_difference"]:
        print(f"\nlayer {layer}: no difference between the models (δ̄ ≈ 0); nothing to read.")
        return
    tokens = ", ".join(repr(t.strip() or t) for t in info["top_tokens"])
    print(f"\nlogit lens of δ̄ (positions 1..k-1) at layer {layer}, top 20:\n  {tokens}")
