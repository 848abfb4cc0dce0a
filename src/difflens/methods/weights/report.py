"""The weight-space lens section of the HTML report: a layers × module-kinds heat map (inline
SVG), the top modules and the readouts of their singular vectors.

Every token, module name and model id goes through :func:`html.escape` (vocabulary entries such
as ``"<script>"`` are ordinary tokens).
"""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Any

from difflens.methods.weights.result import WeightsResult

TABLE_ROWS = 20
READOUT_TOKENS = 12


def _token(text: str) -> str:
    shown = text.replace(" ", "␣").replace("\n", "⏎") or "∅"
    return f"<code>{escape(shown)}</code>"


def heatmap_svg(heatmap: dict[str, Any], cell: int = 22) -> str:
    """Layers (rows) × module kinds (columns), white → blue by value / max; ``None`` grey."""
    layers, kinds, values = heatmap.get("layers", []), heatmap.get("kinds", []), \
        heatmap.get("values", [])
    if not layers or not kinds:
        return "<p><em>no modules inside a layer stack</em></p>"
    top = max((v for row in values for v in row if v is not None), default=0.0) or 1.0
    left, upper = 44, 110
    width, height = left + cell * len(kinds) + 90, upper + cell * len(layers) + 10
    parts = [f'<text x="4" y="14" font-size="12" font-weight="bold">'
             f'{escape("‖ΔW‖_F" if heatmap.get("metric") == "norm" else "‖ΔW‖_F / ‖W‖_F")}'
             f" per layer × module kind (max {top:.3g})</text>"]
    for j, kind in enumerate(kinds):
        x = left + cell * j + cell / 2
        parts.append(f'<text x="{x:.1f}" y="{upper - 6}" font-size="10" '
                     f'transform="rotate(-60 {x:.1f} {upper - 6})">{escape(kind)}</text>')
    for i, layer in enumerate(layers):
        y = upper + cell * i
        parts.append(f'<text x="{left - 6}" y="{y + cell * 0.7:.1f}" font-size="10" '
                     f'text-anchor="end">{int(layer)}</text>')
        for j, value in enumerate(values[i]):
            if value is None:
                fill, title = "#eeeeee", "not diffed"
            else:
                t = max(0.0, min(1.0, value / top))
                r, g = round(255 - 204 * t), round(255 - 153 * t)
                fill, title = f"rgb({r},{g},204)" if t > 0 else "#ffffff", f"{value:.4g}"
            parts.append(f'<rect x="{left + cell * j}" y="{y}" width="{cell - 1}" '
                         f'height="{cell - 1}" fill="{fill}" stroke="#ccc" stroke-width="0.5">'
                         f"<title>layer {int(layer)} {escape(kinds[j])}: {title}</title></rect>")
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'font-family="sans-serif">{"".join(parts)}</svg>')


def _modules_table(rows: list[dict[str, Any]]) -> str:
    body = []
    for i, row in enumerate(rows[:TABLE_ROWS], start=1):
        rel = row.get("relative")
        sigma = ", ".join(f"{s:.3g}" for s in row.get("sigma", [])[:4])
        body.append(
            f"<tr><td>{i}</td><td><code>{escape(row['name'])}</code></td>"
            f"<td>{escape(str(row.get('role') or '—'))}</td><td>{row['norm']:.4g}</td>"
            f"<td>{'—' if rel is None else f'{rel:.3g}'}</td><td>{sigma}</td>"
            f"<td>{row.get('stable_rank', 0.0):.2f}</td></tr>")
    return ("<table><tr><th>#</th><th>module</th><th>residual</th><th>‖ΔW‖_F</th>"
            "<th>‖ΔW‖/‖W‖</th><th>top σ</th><th>stable rank</th></tr>" + "".join(body)
            + "</table>")


def _readouts(readouts: list[dict[str, Any]]) -> str:
    items = []
    for row in readouts:
        vecs = []
        for v in row["vectors"]:
            sides = []
            for sign in ("+", "-"):
                mark = " ★" if v["best"] == sign else ""
                tokens = " ".join(_token(t) for t in v[sign]["tokens"][:READOUT_TOKENS])
                sides.append(f"<li>{escape(sign)}{escape(mark)} (z {v[sign]['z']:.2f}): "
                             f"{tokens}</li>")
            vecs.append(f"<li>σ{v['index'] + 1} = {v['sigma']:.3g}<ul>{''.join(sides)}</ul>"
                        "</li>")
        side = "left (output)" if row["role"] == "write" else "right (input)"
        items.append(f"<li><code>{escape(row['module'])}</code> — {escape(side)} singular "
                     f"vectors<ul>{''.join(vecs)}</ul></li>")
    return "<ul class='dl-weights-readouts'>" + "".join(items) + "</ul>"


def render_section(run_dir: str | Path) -> str:
    """HTML fragment for the weight-space lens run in ``run_dir`` (reads ``summary.json``)."""
    res = WeightsResult.load(run_dir)
    what = "LoRA adapter (exact, from the factors)" if res.method == "lora" else \
        "full finetune (streamed tensor by tensor)"
    parts = ['<section class="dl-weights"><h2>Weight-space lens</h2>',
             f"<p>{escape(res.finetuned)} vs {escape(res.base)}: {escape(what)}; "
             f"{res.n_modules} linear modules, {res.n_changed} changed; ranked by "
             f"{escape(res.rank_by)}.</p>"]
    for note in res.notes:
        parts.append(f"<p class='note'>{escape(note)}</p>")
    if res.no_difference:
        parts.append("<p><strong>No difference between the models</strong>: ΔW = 0 in every "
                     "module (max ‖ΔW‖_F = "
                     f"{res.max_norm:.2e}).</p>")
        return "".join(parts) + "</section>"
    parts.append(heatmap_svg(res.heatmap))
    parts.append("<h3>Top modules</h3>" + _modules_table(res.top_modules))
    tokens = " ".join(_token(t) for t in res.top_tokens(20))
    parts.append(f"<h3>Readouts</h3><p>Tokens recurring across the top modules' readouts: "
                 f"{tokens}</p><p>Each singular vector read through the base's final norm and "
                 "unembedding, both signs (★: the sign whose top tokens stand further out).</p>")
    parts.append(_readouts(res.readouts))
    return "".join(parts) + "</section>"
