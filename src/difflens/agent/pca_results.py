"""A PCA run as the agent reads it: an overview up front and sections on request.

Like :mod:`difflens.agent.results`: only readouts of the difference (explained variance,
tokens of each component's two signs, top contexts, steered / unsteered samples); never model
ids, paths or anything graded against the organism's description.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from difflens.agent.results import Results, _toks
from difflens.methods.pca.result import PCAResult

OVERVIEW_COMPONENTS = 3  # components described in the overview
CONTEXTS_SHOWN = 5  # contexts per component and sign in the "contexts" section


def pca_results(run_dir: Path | str) -> Results:
    """Overview and ``get_detail`` sections of a PCA run directory (``difflens pca``)."""
    res = PCAResult.load(run_dir)
    lines = ["PCA of activation differences: principal components of (finetuned - base) "
             f"activations over every token of unrelated text, at layer(s) {res.layers}. The "
             "sign of a component is arbitrary: '+' is the side the average difference points "
             "to; both sides are shown."]
    if res.no_difference:
        lines.append("The two models' activations do not differ: no components.")
        return Results("pca", "\n".join(lines), {})
    sections: dict[str, str] = {}
    for layer in res.layers:
        info = res.pca[layer]
        shares = ", ".join(f"PC{i + 1} {100 * v:.1f}%" for i, v in enumerate(info["explained"]))
        lines += ["", f"Layer {layer}: explained variance {shares}.",
                  f"  The average difference carries {100 * info['mean_share']:.0f}% of the "
                  "squared difference; cosine of each component with the average difference "
                  "on the first tokens: "
                  + ", ".join(f"PC{i + 1} {v:+.2f}" for i, v in enumerate(info["cos_adl"][:5]))]
        for row in res.readouts.get(layer, [])[:OVERVIEW_COMPONENTS]:
            i = row["component"]
            lines.append(f"  PC{i + 1} + side: {_toks(row['positive']['tokens'])}")
            lines.append(f"  PC{i + 1} - side: {_toks(row['negative']['tokens'])}")
    sections["readouts"] = _readouts(res)
    contexts = _contexts(res)
    if contexts:
        sections["contexts"] = contexts
    steering = _steering(res.steering or [], limit=None)
    if steering:
        lines += ["", "Steering the finetuned model along + PC (steered vs unsteered answers):"]
        lines += _steering(res.steering or [], limit=2)
        sections["steering"] = "\n".join(steering)
    lines += ["", f"Sections for get_detail: {', '.join(sections)}."]
    return Results("pca", "\n".join(lines), sections)


def _readouts(res: PCAResult) -> str:
    out = []
    for layer in res.layers:
        patch = {r["component"]: r for r in (res.patchscope or {}).get(layer, [])}
        for row in res.readouts.get(layer, []):
            i = row["component"]
            out.append(f"layer {layer} PC{i + 1} + side (logit lens): "
                       f"{_toks(row['positive']['tokens'], 20)}")
            out.append(f"layer {layer} PC{i + 1} - side (logit lens): "
                       f"{_toks(row['negative']['tokens'], 20)}")
            for sign, label in (("positive", "+"), ("negative", "-")):
                chosen = (patch.get(i) or {}).get(sign)
                if chosen:
                    out.append(f"layer {layer} PC{i + 1} {label} side (Patchscope): "
                               f"{_toks(chosen['tokens'], 20)}")
    return "\n".join(out)


def _contexts(res: PCAResult) -> str:
    out = []
    for layer, comps in res.contexts().items():
        for i, per in enumerate(comps):
            for sign, label in (("positive", "+"), ("negative", "-")):
                for row in (per.get(sign) or [])[:CONTEXTS_SHOWN]:
                    text = "".join(f"[[{t}]]" if j == row["center"] else t
                                   for j, t in enumerate(row["tokens"]))
                    out.append(f"layer {layer} PC{i + 1} {label}: {text!r}")
    return "\n".join(out)


def _steering(runs: list[dict[str, Any]], limit: int | None) -> list[str]:
    rows = []
    for steer in runs:
        if not steer.get("steered"):
            continue
        rows.append(f"PC{steer['component'] + 1} (strength {steer['alpha']:.3g}):")
        for prompt, s, u in list(zip(steer["prompts"], steer["steered"], steer["unsteered"],
                                     strict=False))[:limit]:
            rows += [f"  Prompt: {prompt}", f"    steered: {s}", f"    unsteered: {u}"]
    return rows
