"""The crosscoder / diff-SAE section of the HTML report, from an ``analyze`` run directory.

An HTML fragment with inline styles and inline SVG.  The latent table can be sorted by clicking
a column heading through a few lines of inline script; without scripts it is still complete,
ordered by group and Δ_norm.  Every string from a model, tokenizer or corpus (tokens, contexts,
generations, prompts) goes through :func:`html.escape`.
"""

from __future__ import annotations

import math
from html import escape
from pathlib import Path
from typing import Any

from difflens.errors import DifflensError
from difflens.io.artifacts import read_optional_json

_TAG_COLORS = {"ft_only": "#dc3912", "base_only": "#3366cc", "shared": "#109618",
               "other": "#999999"}
_SORT_SCRIPT = (
    "<script>(function(){document.querySelectorAll('table.dl-sort').forEach(function(t){"
    "t.querySelectorAll('th').forEach(function(th,i){th.style.cursor='pointer';"
    "th.addEventListener('click',function(){var b=t.tBodies[0],r=Array.from(b.rows),"
    "d=th.dataset.d==='1'?-1:1;th.dataset.d=d>0?'1':'0';r.sort(function(x,y){"
    "var p=x.cells[i].dataset.v,q=y.cells[i].dataset.v,a=parseFloat(p),c=parseFloat(q);"
    "if(isNaN(a)||isNaN(c)){if(isNaN(a)!==isNaN(c))return isNaN(a)?1:-1;"
    "return d*String(p).localeCompare(String(q));}return d*(a-c);});"
    "r.forEach(function(e){b.appendChild(e);});});});});})();</script>")


def _token(text: str) -> str:
    """A token with its whitespace visible, escaped."""
    return escape(text.replace(" ", "␣").replace("\n", "⏎")) or "∅"


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, float):
        small = value != 0 and abs(value) < 10**-digits
        return f"{value:.1e}" if small else f"{value:.{digits}f}"
    return escape(str(value))


def histogram_svg(counts: list[int], edges: list[float], width: int = 560,
                  height: int = 200) -> str:
    """Δ_norm histogram as SVG bars, log-scaled heights (the shared bulk would hide the rest),
    coloured by the tag region of each bin."""
    left, bottom, top_pad = 40, height - 30, 24
    n = max(len(counts), 1)
    bar_w = (width - left - 10) / n
    top = math.log10(1 + max(counts or [1]))
    parts = ['<text x="8" y="16" font-size="13" font-weight="bold">Δ_norm histogram '
             '(log scale; 0 = finetune-only, 1 = base-only)</text>']
    for i, count in enumerate(counts):
        mid = (edges[i] + edges[i + 1]) / 2
        tag = ("ft_only" if mid < 0.1 else "base_only" if mid > 0.9
               else "shared" if abs(mid - 0.5) < 0.1 else "other")
        h = (bottom - top_pad) * math.log10(1 + count) / (top or 1)
        x = left + i * bar_w
        parts.append(f'<rect x="{x:.1f}" y="{bottom - h:.1f}" width="{bar_w - 1:.1f}" '
                     f'height="{h:.1f}" fill="{_TAG_COLORS[tag]}"><title>Δ_norm '
                     f'{edges[i]:.2f}–{edges[i + 1]:.2f}: {count} latents</title></rect>')
        if count:
            parts.append(f'<text x="{x + bar_w / 2:.1f}" y="{bottom - h - 2:.1f}" '
                         f'font-size="8" text-anchor="middle">{count}</text>')
    for value in (0.0, 0.1, 0.5, 0.9, 1.0):
        x = left + value * n * bar_w
        parts.append(f'<text x="{x:.1f}" y="{bottom + 14}" font-size="10" '
                     f'text-anchor="middle">{value:g}</text>')
    parts.append(f'<line x1="{left}" x2="{width - 10}" y1="{bottom}" y2="{bottom}" '
                 'stroke="#444"/>')
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'role="img">{"".join(parts)}</svg>')


def _metrics(m: dict[str, Any]) -> str:
    rows = [("validation tokens", m["n_rows"]), ("width", m["width"]), ("layer", m["layer"])]
    for name, value in m["fve"].items():
        base = m["fve_zero_latents"][name]
        rows.append((f"FVE {name} (no latent active: {_fmt(base)})", value))
    rows += [("L0 (active latents per token)", m["l0"]),
             ("dead fraction (never fired on validation)", m["dead_fraction"]),
             ("dead fraction (training counter)", m["dead_fraction_training"])]
    body = "".join(f"<tr><td>{escape(k)}</td><td>{_fmt(v)}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def _scaling(m: dict[str, Any]) -> str:
    groups = m.get("latent_scaling") or {}
    if not any(s["n"] for s in groups.values()):
        return ""
    body = "".join(
        f"<tr><td>{escape(g.replace('_', ' '))}</td><td>{s['n']}</td>"
        f"<td>{_fmt(s['median_nu_error'])}</td><td>{_fmt(s['median_nu_reconstruction'])}</td>"
        "</tr>" for g, s in groups.items() if s["n"])
    return ("<h3>Latent Scaling</h3><table><tr><th>group</th><th>n</th><th>median ν^ε</th>"
            f"<th>median ν^r</th></tr>{body}</table><p class='note'>ν = β_base / β_ft of the "
            "ft decoder direction, raw units. ν ≈ 0: truly finetune-specific; high ν^ε: the "
            "base model has the concept too (complete shrinkage); high ν^r: other latents "
            "reconstruct it in the base model (latent decoupling). 'ft leaning': lowest "
            "Δ_norm latents, added when few are finetune-only; 'control': random shared "
            "latents.</p>")


def _cell(value: Any, shown: str | None = None) -> str:
    v = "" if value is None else escape(str(value))
    return f'<td data-v="{v}">{shown if shown is not None else _fmt(value)}</td>'


def _latent_table(rows: list[dict[str, Any]], lens: dict[str, Any] | None,
                  crosscoder: bool) -> str:
    heads = ["latent", "group"] + (["tag", "Δ_norm", "cos", "ν^ε", "ν^r"] if crosscoder
                                   else ["‖d‖"]) + ["freq", "max act", "logit lens"]
    out = []
    for r in rows:
        tokens = (lens or {}).get(str(r["latent"])) or []
        words = " ".join(f"<code>{_token(t['token'])}</code>" for t in tokens[:6])
        cells = [_cell(r["latent"], f"<a href='#latent-{r['latent']}'>{r['latent']}</a>"),
                 _cell(r.get("group"), escape((r.get("group") or "").replace("_", " ")))]
        if crosscoder:
            color = _TAG_COLORS.get(r["tag"], "#999")
            cells += [_cell(r["tag"], f"<span style='color:{color}'>{escape(r['tag'])}</span>"),
                      _cell(r["delta_norm"]), _cell(r["cosine"]), _cell(r.get("nu_error")),
                      _cell(r.get("nu_reconstruction"))]
        else:
            cells.append(_cell(r["norm"]))
        cells += [_cell(r["freq"], _fmt(r["freq"], 4)), _cell(r["max_act"]),
                  f"<td>{words}</td>"]
        out.append(f"<tr>{''.join(cells)}</tr>")
    head = "".join(f"<th>{escape(h)}</th>" for h in heads)
    return (f"<table class='dl-sort'><thead><tr>{head}</tr></thead><tbody>{''.join(out)}"
            "</tbody></table>")


def _context(ctx: dict[str, Any]) -> str:
    """One text window, each token shaded by the latent's activation on it."""
    acts = [a or 0.0 for a in ctx["acts"]]
    peak = max([*acts, 1e-12])
    tokens = ctx.get("tokens") or [f"[{t}]" for t in ctx["token_ids"]]
    spans = []
    for i, (tok, a) in enumerate(zip(tokens, acts, strict=False)):
        alpha = min(1.0, max(0.0, a / peak))
        border = "border-bottom:2px solid #dc3912;" if i == ctx["focus"] else ""
        spans.append(f"<span title='{a:.3g}' style='background:rgba(255,170,0,{alpha:.2f});"
                     f"{border}'>{escape(tok)}</span>")
    return (f"<div class='sample tok'>{''.join(spans)} <span class='note'>"
            f"(text {int(ctx['text'])}, act {_fmt(ctx['activation'])})</span></div>")


def _details(latent: str, row: dict[str, Any], contexts: list[dict[str, Any]],
             lens: list[dict[str, Any]] | None, samples: list[dict[str, Any]]) -> str:
    head = f"<h3 id='latent-{escape(latent)}'>Latent {escape(latent)}"
    if "tag" in row:
        head += (f" — {escape(row['tag'])}, Δ_norm {_fmt(row['delta_norm'])}, "
                 f"ν^ε {_fmt(row.get('nu_error'))}, ν^r {_fmt(row.get('nu_reconstruction'))}")
    parts = [head + "</h3>"]
    if lens:
        parts.append("<p>logit lens (ft decoder): " + " ".join(
            f"<code>{_token(t['token'])}</code>" for t in lens) + "</p>")
    parts += [_context(c) for c in contexts]
    for s in samples:
        parts.append(f"<div class='sample'><b>α={_fmt(s['alpha'], 2)}</b> "
                     f"{escape(s['prompt'])} → {escape(s['text'])}</div>")
    return "".join(parts)


def render_section(run_dir: str | Path, max_details: int = 20) -> str:
    """HTML fragment for a ``difflens analyze`` run directory."""
    run = Path(run_dir)
    metrics = read_optional_json(run / "metrics.json")
    rows = read_optional_json(run / "latents.json")
    if metrics is None or rows is None:
        raise DifflensError(f"{run} has no dictionary analysis (metrics.json, latents.json); "
                            "run `difflens analyze` first")
    contexts = (read_optional_json(run / "contexts.json") or {}).get("latents", {})
    lens = read_optional_json(run / "lens.json")
    steering = read_optional_json(run / "steering.json") or {}
    crosscoder = "tags" in metrics
    title = "Crosscoder" if crosscoder else "diff-SAE"
    parts = [f"<h2>{title} analysis</h2>", _metrics(metrics)]
    if crosscoder:
        tags = ", ".join(f"<span style='color:{_TAG_COLORS[k]}'>{escape(k)}</span> {v}"
                         for k, v in metrics["tags"].items())
        hist = metrics["delta_norm_histogram"]
        parts += [f"<p>Latents by tag: {tags}</p>",
                  histogram_svg(hist["counts"], hist["edges"]), _scaling(metrics)]
    shown = [rows[int(j)] for j in contexts]
    parts.append(f"<h3>Selected latents</h3><p class='note'>{len(shown)} of {len(rows)} "
                 "latents (all are in latents.json); click a heading to sort.</p>")
    parts.append(_latent_table(shown, lens, crosscoder) + _SORT_SCRIPT)
    samples = steering.get("samples", [])
    baseline = [s for s in samples if s["latent"] is None]
    if baseline:
        parts.append("<h3>Unsteered finetuned model</h3>" + "".join(
            f"<div class='sample'>{escape(s['prompt'])} → {escape(s['text'])}</div>"
            for s in baseline))
    parts.append("<h3>Latent details</h3><p class='note'>Contexts: tokens shaded by the "
                 "latent's activation, the top-activating token underlined.</p>")
    for latent in list(contexts)[:max_details]:
        mine = [s for s in samples if s["latent"] == int(latent)]
        parts.append(_details(latent, rows[int(latent)], contexts[latent],
                              (lens or {}).get(latent), mine))
    return "\n".join(parts)
