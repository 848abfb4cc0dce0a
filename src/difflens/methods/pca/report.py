"""The PCA section of the HTML report: explained variance, readouts, contexts, steered samples.

Returns an HTML fragment (inline styles, no scripts).  Every string from a model, a tokenizer or
a corpus goes through :func:`html.escape`.  The explained-variance chart is drawn by the
caller's ``chart`` function (the report layer passes ``report.svg.line_chart``), so this method
module imports nothing from the report layer.
"""

from __future__ import annotations

from collections.abc import Callable
from html import escape
from pathlib import Path

from difflens.methods.pca.result import PCAResult

SHOWN_TOKENS = 10  # readout tokens per sign in the table
SHOWN_CONTEXTS = 5  # contexts per component and sign
Chart = Callable[..., str]


def _tok(text: str) -> str:
    shown = text.replace(" ", "␣").replace("\n", "⏎") or "∅"
    return f"<code>{escape(shown)}</code>"


def _toks(tokens: list[str], n: int = SHOWN_TOKENS) -> str:
    return " ".join(_tok(t) for t in tokens[:n])


def _layer_table(res: PCAResult, layer: int) -> str:
    info = res.pca[layer]
    lens = {r["component"]: r for r in res.readouts.get(layer, [])}
    patch = {r["component"]: r for r in (res.patchscope or {}).get(layer, [])}
    rows = []
    for i, share in enumerate(info["explained"]):
        cells = [f"PC{i + 1}", f"{100 * share:.2f}%", f"{100 * info['cumulative'][i]:.1f}%",
                 f"{info['cos_adl'][i]:+.3f}", f"{info['cos_mean'][i]:+.3f}"]
        read = lens.get(i)
        cells.append(_toks(read["positive"]["tokens"]) if read else "")
        cells.append(_toks(read["negative"]["tokens"]) if read else "")
        ps = patch.get(i) or {}
        cells.append(" | ".join(
            f"{sign[0]}: s={ch['scale']} {_toks(ch['tokens'], 6)}"
            for sign in ("positive", "negative") if (ch := ps.get(sign))))
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    head = ("<tr><th>component</th><th>explained</th><th>cumulative</th><th>cos δ̄ (ADL)</th>"
            "<th>cos mean δ</th><th>logit lens +c</th><th>logit lens −c</th>"
            "<th>Patchscope (chosen scale)</th></tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def _heat_span(token: str, heat: float | None, top: float, center: bool) -> str:
    style = "padding:0 1px;"
    if heat is not None and top > 0:
        alpha = min(1.0, abs(heat) / top)
        color = "255,140,0" if heat >= 0 else "60,120,220"
        style += f"background:rgba({color},{alpha:.2f});"
    if center:
        style += "outline:1px solid #333;"
    title = "" if heat is None else f' title="{heat:+.3f}"'
    shown = token.replace("\n", "⏎")
    return f'<span style="{style}"{title}>{escape(shown)}</span>'


def _contexts(res: PCAResult) -> str:
    parts = []
    for layer, comps in res.contexts().items():
        for i, per in enumerate(comps):
            for sign in ("positive", "negative"):
                rows = per.get(sign) or []
                if not rows:
                    continue
                top = max((abs(h) for r in rows for h in r["heat"] if h is not None),
                          default=0.0)
                items = "".join(
                    "<li>" + "".join(_heat_span(t, h, top, j == r["center"]) for j, (t, h)
                                     in enumerate(zip(r["tokens"], r["heat"], strict=True)))
                    + f" <small>(projection {r['value']:+.3f}; text {r['text_index']}, "
                      f"position {r['position']})</small></li>"
                    for r in rows[:SHOWN_CONTEXTS])
                label = "+" if sign == "positive" else "−"
                parts.append(f"<h4>layer {layer}, {label}PC{i + 1}</h4>"
                             f"<ul class='sample'>{items}</ul>")
    if not parts:
        return ""
    return ("<h3>Top-activating contexts</h3><p class='note'>Positions where δ projects most "
            "onto the component (each sign); the heat is the projection at every token "
            "(orange +, blue −), the framed token is the top position.</p>" + "".join(parts))


def _steering(res: PCAResult) -> str:
    parts = []
    for steer in res.steering or []:
        what = f"+PC{steer['component'] + 1} at layer {steer['layer']}"
        if not steer["found"]:
            parts.append(f"<p>Steering along {escape(what)}: no coherent strength "
                         f"({escape(str(steer.get('reason')))}).</p>")
            continue
        rows = "".join(
            f"<tr><td>{escape(p)}</td><td><div class='sample'>{escape(s)}</div></td>"
            f"<td><div class='sample'>{escape(u)}</div></td></tr>"
            for p, s, u in zip(steer["prompts"], steer["steered"], steer["unsteered"],
                               strict=False))
        flag = "" if steer.get("confirmed") is not False else \
            " <span class='flag'>(final samples below the coherence threshold)</span>"
        parts.append(f"<p>Steering along {escape(what)} at strength {steer['alpha']:.3g} ν_ft"
                     f"{flag}</p><table><tr><th>prompt</th><th>steered</th><th>unsteered</th>"
                     f"</tr>{rows}</table>")
    return "<h3>Steering</h3>" + "".join(parts) if parts else ""


def render_section(run_dir: str | Path, chart: Chart | None = None) -> str:
    """HTML fragment for the PCA run in ``run_dir``; ``chart(series, x_labels, title,
    y_label=...)`` draws the explained-variance plot (omitted when None)."""
    res = PCAResult.load(run_dir)
    parts = [
        "<section class='dl-pca'><h2>PCA of activation differences</h2>",
        f"<p>{escape(res.finetuned)} vs {escape(res.base)}: δ = h_ft − h_base over "
        f"{res.n_positions} token positions of {res.n_texts} texts (BOS and padding "
        f"excluded), d = {res.d}, layers {escape(str(res.layers))}.</p>",
    ]
    if res.layer_choice:
        parts.append(f"<p class='note'>Layer: {escape(res.layer_choice.get('reason', ''))}</p>")
    parts += [f"<p class='note'>{escape(n)}</p>" for n in res.notes]
    if res.no_difference:
        parts.append("<p><strong>No difference between the models</strong>: the covariance "
                     "of δ is zero; nothing to decompose.</p>")
        return "".join(parts) + "</section>"
    for layer in res.layers:
        info = res.pca[layer]
        parts.append(f"<h3>Layer {layer}</h3><p>The top {len(info['explained'])} components "
                     f"explain {100 * info['cumulative'][-1]:.1f}% of the variance of δ; the "
                     f"mean δ carries {100 * info['mean_share']:.1f}% of the uncentred second "
                     f"moment E‖δ‖² (‖mean δ‖ = {info['mean_norm']:.3g}, ‖δ̄_ADL‖ = "
                     f"{info['adl_norm']:.3g}). Signs: +c is the way the mean δ points.</p>")
        if chart is not None:
            labels = [f"PC{i + 1}" for i in range(len(info["explained"]))]
            parts.append(chart({"explained %": [100 * v for v in info["explained"]],
                                "cumulative %": [100 * v for v in info["cumulative"]]},
                               labels, f"Explained variance, layer {layer}",
                               y_label="% of var"))
        parts.append(_layer_table(res, layer))
    parts.append(_contexts(res))
    parts.append(_steering(res))
    return "".join(parts) + "</section>"
