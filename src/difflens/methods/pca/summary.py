"""The short text summary printed at the end of a PCA run."""

from __future__ import annotations

from typing import Any


def _toks(tokens: list[str], n: int = 10) -> str:
    return ", ".join(repr(t) for t in tokens[:n])


def print_summary(summary: dict[str, Any]) -> None:
    print(f"\nPCA of activation differences  base={summary['base']}  "
          f"finetuned={summary['finetuned']}")
    print(f"     {summary['n_texts']} texts, {summary['n_positions']} positions (BOS and padding "
          f"excluded), d={summary['d']}; layers {summary['layers']}; run dir "
          f"{summary['run_dir']}")
    choice = summary.get("layer_choice")
    if choice:
        print(f"     layer: {choice['reason']}")
    for note in summary.get("notes") or []:
        print(f"\n{note}")
    if summary["no_difference"]:
        return
    for layer, info in summary["pca"].items():
        explained = info["explained"]
        print(f"\nlayer {layer}: explained variance " + " ".join(
            f"PC{i + 1} {100 * v:.1f}%" for i, v in enumerate(explained[:5]))
            + f"  (top {len(explained)}: {100 * info['cumulative'][-1]:.1f}%)")
        print(f"  mean δ carries {100 * info['mean_share']:.1f}% of E‖δ‖²; cos(PC, ADL δ̄): "
              + " ".join(f"{v:+.2f}" for v in info["cos_adl"][:5]))
        for row in (summary.get("readouts") or {}).get(layer, []):
            i = row["component"]
            print(f"  PC{i + 1} +: {_toks(row['positive']['tokens'])}")
            print(f"  PC{i + 1} −: {_toks(row['negative']['tokens'])}")
    for steer in summary.get("steering") or []:
        what = f"PC{steer['component'] + 1} at layer {steer['layer']}"
        if not steer["found"]:
            print(f"\nsteering along {what}: no coherent strength ({steer.get('reason')})")
            continue
        print(f"\nsteering along {what}: strength {steer['alpha']:.3g} ν_ft")
        for prompt, text in list(zip(steer["prompts"], steer["steered"], strict=False))[:2]:
            print(f"  {prompt!r} → {text[:160]!r}")
    if summary.get("report"):
        print(f"\nreport: {summary['report']}")
