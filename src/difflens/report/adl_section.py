"""ADL section of the HTML report: norms, token tables, Patchscope, steering, similarity,
causal effect — each part rendered only when its stage finished."""

from __future__ import annotations

from html import escape
from pathlib import Path

from difflens.methods.adl.records import (
    CausalEffect,
    Comparison,
    LayerLens,
    Patchscope,
    Relevance,
    Similarity,
    Steering,
)
from difflens.methods.adl.result import ADLResult, ADLSummary
from difflens.report.blocks import token_table
from difflens.report.svg import interval_chart, line_chart, strip_chart


def render_adl(run: Path) -> str:
    result = ADLResult.load(run, partial=True)  # an unfinished run shows what it has
    summary, lens = result.summary, result.lens
    parts = [_overview(summary)]
    if lens:
        parts.append(_norms(lens))
        parts.append(_lens_tables(lens, summary.layer if summary else None,
                                  set(_relevant(result.relevance))))
    for renderer, data in ((_patchscope, result.patchscope), (_relevance, result.relevance),
                           (_steering, result.steering), (_similarity, result.similarity),
                           (_causal, result.causal)):
        if data is not None:
            parts.append(renderer(data))
    return "\n".join(parts)


def _overview(summary: ADLSummary | None) -> str:
    if summary is None:
        return "<p class='note'>No summary yet (the run has not finished its first stages).</p>"
    fields = {"base": summary.base, "finetuned": summary.finetuned, "layer": summary.layer,
              "n_texts": summary.n_texts, "k": summary.k, "description": summary.description}
    rows = "".join(f"<tr><th>{escape(k)}</th><td>{escape(str(v))}</td></tr>"
                   for k, v in fields.items())
    choice = summary.layer_choice
    if choice is not None and choice.reason:
        rows += (f"<tr><th>layer choice</th><td>{escape(choice.reason)} — rule: "
                 f"{escape(str(choice.rule))}</td></tr>")
    notes = "".join(f"<p class='note'>{escape(n)}</p>" for n in summary.notes)
    return f"<h2>Overview</h2><table>{rows}</table>{notes}"


def _norms(lens: dict[int, LayerLens]) -> str:
    labels = [str(lay) for lay in lens]
    k = len(next(iter(lens.values())).norm)
    series = {f"pos {j}": [info.norm[j] for info in lens.values()] for j in range(k)}
    chart = line_chart(series, labels, "‖δ̄‖ per layer and position", y_label="norm")
    rel = {"‖δ̄‖/ν_ft (pos 1..k-1)": [info.relative_norm for info in lens.values()]}
    chart2 = line_chart(rel, labels, "relative norm of the mean difference", y_label="ratio")
    return f"<h2>Mean activation difference</h2>{chart}{chart2}"


def _lens_tables(lens: dict[int, LayerLens], layer: int | None, hits: set[str]) -> str:
    info = lens.get(layer) if layer is not None else None
    if info is None:
        return ""
    flag = ("<p class='flag'>No difference between the models at this layer (δ̄ ≈ 0): the "
            "readout below is noise.</p>") if info.no_difference else ""
    main = token_table({"δ̄ (pos 1..k-1)": info.mean.tokens,
                        "−δ̄": info.negative.tokens,
                        "base mean": info.base_mean.tokens,
                        "ft mean": info.ft_mean.tokens}, hits)
    per_pos = token_table({f"pos {j}": row.tokens for j, row in enumerate(info.positions)}, hits)
    sweep = token_table({f"L{lay}": other.mean.tokens for lay, other in lens.items()}, hits,
                        limit=10)
    return (f"<h2>Logit lens at layer {layer}</h2>{flag}{main}"
            f"<h3>Per position</h3>{per_pos}<h3>Layer sweep (top 10 of δ̄)</h3>{sweep}")


def _relevant(relevance: Relevance | None) -> list[str]:
    if relevance is None:
        return []
    out = []
    for readout in relevance.readouts.values():
        out += [t for t, ok in zip(readout.tokens, readout.relevant, strict=False) if ok]
    return out


def _patchscope(data: Patchscope) -> str:
    if data.skipped:
        return f"<h2>Patchscope</h2><p class='note'>{escape(data.skipped)}</p>"
    chosen = data.chosen
    tokens = chosen.coherent_tokens if chosen is not None else []
    scales = data.scales
    step = max(1, len(scales) // 8)
    table = token_table({f"s={row.scale}": row.tokens for row in scales[::step]},
                        set(tokens), 15)
    scale = chosen.scale if chosen is not None else None
    return (f"<h2>Patchscope</h2><p>Chosen scale: <b>{escape(str(scale))}</b> "
            f"(× ν_ft); coherent tokens: <span class='tok'>{escape(', '.join(tokens))}</span></p>"
            f"{table}")


def _relevance(data: Relevance) -> str:
    if data.skipped:
        return f"<h2>Token relevance</h2><p class='note'>{escape(data.skipped)}</p>"
    rows = "".join(
        f"<tr><td>{escape(name)}</td><td>{r.fraction:.2f}</td>"
        f"<td>{r.weighted_fraction:.2f}</td><td>{r.trivial_baseline or 0:.2f}</td></tr>"
        for name, r in data.readouts.items())
    grader = "" if data.grader is None else str(data.grader)
    return ("<h2>Token relevance</h2><table><tr><th>readout</th><th>fraction</th>"
            f"<th>prob.-weighted</th><th>trivial baseline</th></tr>{rows}</table>"
            f"<p class='note'>grader: {escape(grader)}</p>")


def _steering(data: Steering) -> str:
    samples = data.samples
    if not data.found:
        reason = "" if data.reason is None else str(data.reason)
        head = (f"<p class='flag'>The steering search found no coherent strength: "
                f"{escape(reason)}</p>")
    else:
        alpha = escape(str(data.alpha))
        head = f"<p>Strongest coherent strength α = <b>{alpha}</b> ν_ft</p>"
        checks = samples.confirmations
        if checks:
            # The search judged 8 prompts; the final samples are graded again (steering.py).
            tried = ", ".join(f"α = {c.alpha:.4g}: {c.coherent_fraction:.0%}" for c in checks)
            cls = "note" if samples.confirmed else "flag"
            head += f"<p class='{cls}'>final samples coherent — {escape(tried)}</p>"
    if data.probes:
        # Speculative strengths no decision needed were generated but not graded (None).
        ordered = sorted((p for p in data.probes if p.coherent_fraction is not None),
                         key=lambda p: p.alpha)
        head += line_chart({"coherent fraction": [p.coherent_fraction for p in ordered]},
                           [f"{p.alpha:.2f}" for p in ordered],
                           "steering search: coherent fraction per strength α", y_label="share")
    rows = []
    for prompt, steered, unsteered in zip(samples.prompts, samples.steered, samples.unsteered,
                                          strict=False):
        rows.append(f"<h3>{escape(prompt)}</h3><div class='pair'>"
                    f"<div class='sample'>{escape(steered)}</div>"
                    f"<div class='sample'>{escape(unsteered)}</div></div>")
    return (f"<h2>Steering</h2>{head}<div class='pair'><b>steered</b><b>unsteered</b></div>"
            + "".join(rows[:20]))


def _similarity(data: Similarity) -> str:
    rows = [(key.replace("_", " ↔ "), iv.ci_low, iv.mean, iv.ci_high)
            for key, iv in data.intervals.items()]
    chart = interval_chart(rows, "cosine similarity (95% bootstrap CI)") if rows else ""
    verdict = ("steered text is closer to the finetune documents than unsteered text "
               "(non-overlapping intervals)" if data.steered_above_unsteered
               else "intervals overlap")
    return (f"<h2>Steering similarity</h2>{chart}<p>{escape(verdict)}; permutation p-value "
            f"(steered > unsteered): {escape(str(data.p_value))}</p>"
            + _comparisons(data.comparisons))


def _comparisons(comparisons: list[Comparison]) -> str:
    """One row per steered-vs-unsteered comparison, saying which model and which target."""
    if len(comparisons) < 2:
        return ""
    head = ("<tr><th>model (steered vs unsteered)</th><th>similarity to</th><th>steered</th>"
            "<th>unsteered</th><th>difference</th><th>p</th></tr>")
    rows = "".join(
        f"<tr><td>{escape(c.model)}</td><td>{escape(c.against)}</td>"
        f"<td>{c.steered.mean:.3f} [{c.steered.ci_low:.3f}, "
        f"{c.steered.ci_high:.3f}]</td><td>{c.unsteered.mean:.3f} "
        f"[{c.unsteered.ci_low:.3f}, {c.unsteered.ci_high:.3f}]</td>"
        f"<td>{c.difference:+.3f}</td><td>{c.p_value:.4f}</td></tr>"
        for c in comparisons)
    return (f"<table>{head}{rows}</table><p class='note'>The base model steered with the same "
            "vector at the same strength asks whether the difference alone carries the domain; "
            "a finetuned model that already writes about its domain unprompted saturates the "
            "finetuned comparison.  The description comparison is the one that reads taboo-like "
            "organisms, whose documents never name the secret.</p>")


def _causal(data: dict[str, CausalEffect]) -> str:
    groups: dict[str, list[float]] = {}
    marker: dict[str, float] = {}
    for dataset, entry in data.items():
        for kind, values in entry.baselines.items():
            label = f"{dataset}: {kind}"
            groups[label] = values
            marker[label] = entry.delta_ce
    chart = strip_chart(groups, marker,
                        "ΔCE when δ̄ is projected out (red) vs baselines (grey)")
    return (f"<h2>Causal effect</h2>{chart}<p class='note'>Expected: ΔCE &gt; 0 on finetune "
            "documents (the finetune relies on δ̄), &lt; 0 on reference text.</p>")
