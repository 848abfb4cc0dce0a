"""ADL section of the HTML report: norms, token tables, Patchscope, steering, similarity,
causal effect — each part rendered only when its stage finished."""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Any

from difflens.io.artifacts import read_optional_json
from difflens.report.blocks import token_table
from difflens.report.svg import interval_chart, line_chart, strip_chart


def render_adl(run: Path) -> str:
    summary = read_optional_json(run / "summary.json") or {}
    lens = read_optional_json(run / "logit_lens.json")
    parts = [_overview(summary)]
    if lens:
        parts.append(_norms(lens))
        parts.append(_lens_tables(lens, str(summary.get("layer", "")),
                                  set(_relevant(read_optional_json(run / "relevance.json")))))
    for name, renderer in (("patchscope.json", _patchscope), ("relevance.json", _relevance),
                           ("steering.json", _steering), ("similarity.json", _similarity),
                           ("causal.json", _causal)):
        data = read_optional_json(run / name)
        if data is not None:
            parts.append(renderer(data))
    return "\n".join(parts)


def _overview(summary: dict[str, Any]) -> str:
    if not summary:
        return "<p class='note'>No summary yet (the run has not finished its first stages).</p>"
    rows = "".join(f"<tr><th>{escape(k)}</th><td>{escape(str(summary.get(k, '')))}</td></tr>"
                   for k in ("base", "finetuned", "layer", "n_texts", "k", "description"))
    choice = summary.get("layer_choice") or {}
    if choice.get("reason"):
        rows += (f"<tr><th>layer choice</th><td>{escape(choice['reason'])} — rule: "
                 f"{escape(str(choice.get('rule')))}</td></tr>")
    notes = "".join(f"<p class='note'>{escape(n)}</p>" for n in summary.get("notes", []))
    return f"<h2>Overview</h2><table>{rows}</table>{notes}"


def _norms(lens: dict[str, Any]) -> str:
    layers = sorted(lens["layers"], key=int)
    k = len(lens["layers"][layers[0]]["norm"])
    series = {f"pos {j}": [lens["layers"][lay]["norm"][j] for lay in layers] for j in range(k)}
    chart = line_chart(series, layers, "‖δ̄‖ per layer and position", y_label="norm")
    rel = {"‖δ̄‖/ν_ft (pos 1..k-1)": [lens["layers"][lay]["relative_norm"] for lay in layers]}
    chart2 = line_chart(rel, layers, "relative norm of the mean difference", y_label="ratio")
    return f"<h2>Mean activation difference</h2>{chart}{chart2}"


def _lens_tables(lens: dict[str, Any], layer: str, hits: set[str]) -> str:
    info = lens["layers"].get(layer)
    if info is None:
        return ""
    flag = ("<p class='flag'>No difference between the models at this layer (δ̄ ≈ 0): the "
            "readout below is noise.</p>") if info["no_difference"] else ""
    main = token_table({"δ̄ (pos 1..k-1)": info["mean"]["tokens"],
                        "−δ̄": info["negative"]["tokens"],
                        "base mean": info["base_mean"]["tokens"],
                        "ft mean": info["ft_mean"]["tokens"]}, hits)
    per_pos = token_table({f"pos {j}": row["tokens"] for j, row in
                           enumerate(info["positions"])}, hits)
    sweep = token_table({f"L{lay}": lens["layers"][lay]["mean"]["tokens"]
                         for lay in sorted(lens["layers"], key=int)}, hits, limit=10)
    return (f"<h2>Logit lens at layer {escape(layer)}</h2>{flag}{main}"
            f"<h3>Per position</h3>{per_pos}<h3>Layer sweep (top 10 of δ̄)</h3>{sweep}")


def _relevant(relevance: dict[str, Any] | None) -> list[str]:
    if not relevance:
        return []
    out = []
    for readout in relevance.get("readouts", {}).values():
        out += [t for t, ok in zip(readout.get("tokens", []), readout.get("relevant", []),
                                   strict=False) if ok]
    return out


def _patchscope(data: dict[str, Any]) -> str:
    if data.get("skipped"):
        return f"<h2>Patchscope</h2><p class='note'>{escape(data['skipped'])}</p>"
    chosen = data.get("chosen") or {}
    tokens = chosen.get("coherent_tokens") or []
    scales = data.get("scales", [])
    step = max(1, len(scales) // 8)
    table = token_table({f"s={row['scale']}": row.get("tokens", []) for row in scales[::step]},
                        set(tokens), 15)
    return (f"<h2>Patchscope</h2><p>Chosen scale: <b>{escape(str(chosen.get('scale')))}</b> "
            f"(× ν_ft); coherent tokens: <span class='tok'>{escape(', '.join(tokens))}</span></p>"
            f"{table}")


def _relevance(data: dict[str, Any]) -> str:
    if data.get("skipped"):
        return f"<h2>Token relevance</h2><p class='note'>{escape(data['skipped'])}</p>"
    rows = "".join(
        f"<tr><td>{escape(name)}</td><td>{r['fraction']:.2f}</td>"
        f"<td>{r['weighted_fraction']:.2f}</td><td>{r.get('trivial_baseline', 0):.2f}</td></tr>"
        for name, r in data.get("readouts", {}).items())
    return ("<h2>Token relevance</h2><table><tr><th>readout</th><th>fraction</th>"
            f"<th>prob.-weighted</th><th>trivial baseline</th></tr>{rows}</table>"
            f"<p class='note'>grader: {escape(str(data.get('grader', '')))}</p>")


def _steering(data: dict[str, Any]) -> str:
    if not data.get("found"):
        head = (f"<p class='flag'>The steering search found no coherent strength: "
                f"{escape(str(data.get('reason', '')))}</p>")
    else:
        alpha = escape(str(data.get("alpha")))
        head = f"<p>Strongest coherent strength α = <b>{alpha}</b> ν_ft</p>"
        checks = (data.get("samples") or {}).get("confirmations") or []
        if checks:
            # The search judged 8 prompts; the final samples are graded again (steering.py).
            tried = ", ".join(f"α = {c['alpha']:.4g}: {c['coherent_fraction']:.0%}" for c in checks)
            cls = "note" if (data.get("samples") or {}).get("confirmed") else "flag"
            head += f"<p class='{cls}'>final samples coherent — {escape(tried)}</p>"
    probes = (data.get("search") or {}).get("probes", [])
    if probes:
        # Speculative strengths no decision needed were generated but not graded (None).
        ordered = sorted((p for p in probes if p.get("coherent_fraction") is not None),
                         key=lambda p: p["alpha"])
        head += line_chart({"coherent fraction": [p["coherent_fraction"] for p in ordered]},
                           [f"{p['alpha']:.2f}" for p in ordered],
                           "steering search: coherent fraction per strength α", y_label="share")
    samples = data.get("samples") or {}
    rows = []
    for prompt, steered, unsteered in zip(samples.get("prompts", []), samples.get("steered", []),
                                          samples.get("unsteered", []), strict=False):
        rows.append(f"<h3>{escape(prompt)}</h3><div class='pair'>"
                    f"<div class='sample'>{escape(steered)}</div>"
                    f"<div class='sample'>{escape(unsteered)}</div></div>")
    return (f"<h2>Steering</h2>{head}<div class='pair'><b>steered</b><b>unsteered</b></div>"
            + "".join(rows[:20]))


def _similarity(data: dict[str, Any]) -> str:
    rows = [(key.replace("_", " ↔ "), data[key]["ci_low"], data[key]["mean"], data[key]["ci_high"])
            for key in ("steered_finetune", "unsteered_finetune", "steered_reference",
                        "unsteered_reference") if isinstance(data.get(key), dict)]
    chart = interval_chart(rows, "cosine similarity (95% bootstrap CI)") if rows else ""
    verdict = ("steered text is closer to the finetune documents than unsteered text "
               "(non-overlapping intervals)" if data.get("steered_above_unsteered")
               else "intervals overlap")
    return (f"<h2>Steering similarity</h2>{chart}<p>{escape(verdict)}; permutation p-value "
            f"(steered > unsteered): {escape(str(data.get('p_value')))}</p>"
            + _comparisons(data.get("comparisons") or []))


def _comparisons(comparisons: list[dict[str, Any]]) -> str:
    """One row per steered-vs-unsteered comparison, saying which model and which target."""
    if len(comparisons) < 2:
        return ""
    head = ("<tr><th>model (steered vs unsteered)</th><th>similarity to</th><th>steered</th>"
            "<th>unsteered</th><th>difference</th><th>p</th></tr>")
    rows = "".join(
        f"<tr><td>{escape(c['model'])}</td><td>{escape(c['against'])}</td>"
        f"<td>{c['steered']['mean']:.3f} [{c['steered']['ci_low']:.3f}, "
        f"{c['steered']['ci_high']:.3f}]</td><td>{c['unsteered']['mean']:.3f} "
        f"[{c['unsteered']['ci_low']:.3f}, {c['unsteered']['ci_high']:.3f}]</td>"
        f"<td>{c['difference']:+.3f}</td><td>{c['p_value']:.4f}</td></tr>"
        for c in comparisons)
    return (f"<table>{head}{rows}</table><p class='note'>The base model steered with the same "
            "vector at the same strength asks whether the difference alone carries the domain; "
            "a finetuned model that already writes about its domain unprompted saturates the "
            "finetuned comparison.  The description comparison is the one that reads taboo-like "
            "organisms, whose documents never name the secret.</p>")


def _causal(data: dict[str, Any]) -> str:
    groups: dict[str, list[float]] = {}
    marker: dict[str, float] = {}
    for dataset in ("finetune", "reference"):
        entry = data.get(dataset)
        if not entry:
            continue
        for kind, values in entry.get("baselines", {}).items():
            label = f"{dataset}: {kind}"
            groups[label] = values["delta_ce"] if isinstance(values, dict) else values
            marker[label] = entry["delta_ce"]
    chart = strip_chart(groups, marker,
                        "ΔCE when δ̄ is projected out (red) vs baselines (grey)")
    return (f"<h2>Causal effect</h2>{chart}<p class='note'>Expected: ΔCE &gt; 0 on finetune "
            "documents (the finetune relies on δ̄), &lt; 0 on reference text.</p>")
