"""The per-token KL section of the HTML report: statistics, histograms, the fingerprint table
and the top contexts drawn with per-token heat.

Inline styles and inline SVG only (no scripts, no external assets).  Every string from a model,
a tokenizer or a corpus goes through :func:`html.escape`.
"""

from __future__ import annotations

import math
from html import escape
from pathlib import Path
from typing import Any

from difflens.methods.kl.result import KLResult
from difflens.methods.kl.summary import stat_label

TABLE_ROWS = 30
CONTEXT_ROWS = 12
_HEAT = {"kl": (214, 48, 49), "norm": (47, 111, 208)}  # red for KL, blue for norms


def _token(text: str) -> str:
    shown = text.replace(" ", "␣").replace("\n", "⏎") or "∅"
    return f"<code>{escape(shown)}</code>"


def _fmt(x: float | None) -> str:
    return "–" if x is None else f"{x:.4g}"


def _stats_table(res: KLResult) -> str:
    head = "".join(f"<th>{escape(q)}</th>" for q in
                   next(iter(res.stats.values()))["quantiles"])
    rows = []
    for name, row in res.stats.items():
        qs = "".join(f"<td>{_fmt(v)}</td>" for v in row["quantiles"].values())
        rows.append(f"<tr><td>{escape(stat_label(name))}</td><td>{_fmt(row['mean'])}</td>"
                    f"<td>{_fmt(row['std'])}</td>{qs}<td>{_fmt(row['max'])}</td></tr>")
    return ("<table class='dl-kl-stats'><tr><th>statistic</th><th>mean</th><th>std</th>"
            f"{head}<th>max</th></tr>{''.join(rows)}</table><p class='note'>Quantiles are "
            "exact over every counted position; KL in nats.</p>")


def _histogram(counts: list[int], edges: list[float], title: str, width: int = 520,
               height: int = 150) -> str:
    """Bars over log-spaced bins (empty leading/trailing bins dropped)."""
    nonzero = [i for i, c in enumerate(counts) if c]
    if not nonzero:
        return ""
    lo, hi = nonzero[0], nonzero[-1]
    shown = counts[lo:hi + 1]
    top = max(shown)
    left, bottom, plot_w = 40, height - 26, width - 50
    bar_w = plot_w / len(shown)
    parts = [f'<text x="4" y="14" font-size="12" font-weight="bold">{escape(title)}</text>']
    for j, count in enumerate(shown):
        h = (bottom - 22) * count / top
        parts.append(f'<rect x="{left + j * bar_w:.1f}" y="{bottom - h:.1f}" '
                     f'width="{max(bar_w - 1, 1):.1f}" height="{h:.1f}" fill="#5b7fbf">'
                     f"<title>{count}</title></rect>")

    def edge_label(i: int) -> str:  # bin i spans [edges[i-1], edges[i])
        if i <= 0:
            return f"<{edges[0]:.0e}"
        return f"{edges[min(i, len(edges)) - 1]:.0e}"

    for j in sorted({0, len(shown) // 2, len(shown) - 1}):
        parts.append(f'<text x="{left + j * bar_w:.1f}" y="{bottom + 14}" font-size="10">'
                     f"{escape(edge_label(lo + j))}</text>")
    parts.append(f'<text x="4" y="{bottom}" font-size="10">{top}</text>')
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'role="img">{"".join(parts)}</svg>')


def _line(values: list[float | None], title: str, width: int = 520, height: int = 150) -> str:
    """Mean per position index as a polyline (missing positions skipped)."""
    points = [(i, v) for i, v in enumerate(values) if v is not None]
    if len(points) < 2:
        return ""
    top = max(v for _, v in points) or 1.0
    left, bottom, right = 40, height - 24, width - 10
    n = max(len(values) - 1, 1)
    pts = " ".join(f"{left + (right - left) * i / n:.1f},{bottom - (bottom - 24) * v / top:.1f}"
                   for i, v in points)
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'role="img"><text x="4" y="14" font-size="12" font-weight="bold">{escape(title)}'
            f'</text><text x="4" y="30" font-size="10">{top:.3g}</text>'
            f'<text x="{left}" y="{bottom + 14}" font-size="10">position 0</text>'
            f'<text x="{right - 60}" y="{bottom + 14}" font-size="10">{len(values) - 1}</text>'
            f'<polyline fill="none" stroke="#c0392b" stroke-width="2" points="{pts}"/></svg>')


def _fingerprint(fp: dict[str, Any] | None) -> str:
    if not fp:
        return ("<h3>Token fingerprint</h3><p><em>not computed (--no-fingerprint, or no "
                "difference)</em></p>")

    def table(rows: list[dict[str, Any]]) -> str:
        body = "".join(
            f"<tr><td>{i}</td><td>{_token(r['token'])}</td><td>{r['contribution']:+.4g}</td>"
            f"<td>{100 * r['share']:+.2f}%</td><td>{r['mean_p_ft']:.3g}</td>"
            f"<td>{r['mean_p_base']:.3g}</td></tr>" for i, r in enumerate(rows, start=1))
        return ("<table class='dl-kl-fingerprint'><tr><th>#</th><th>token</th>"
                "<th>Σ p_ft·(log p_ft − log p_base)</th><th>share of KL</th>"
                f"<th>mean p_ft</th><th>mean p_base</th></tr>{body}</table>")

    return (f"<h3>Token fingerprint</h3><p>Each token's summed contribution to the total "
            f"forward KL ({fp['total']:.4g} nats over the corpus): the tokens the finetune "
            "moves probability onto.</p>" + table(fp["top"][:TABLE_ROWS])
            + "<h4>Most negative contributions</h4><p class='note'>Tokens the finetune takes "
              "probability from, where the base was confident.</p>"
            + table(fp["bottom"][:10]))


def _heat_span(token: str, value: float | None, top: float, rgb: tuple[int, int, int],
               peak: bool) -> str:
    alpha = 0.0 if value is None or top <= 0 else min(1.0, value / top)
    title = "not counted" if value is None else f"{value:.4g}"
    style = f"background:rgba({rgb[0]},{rgb[1]},{rgb[2]},{alpha:.2f})"
    if peak:
        style += ";outline:2px solid #222"
    shown = escape(token).replace("\n", "⏎")
    return f'<span title="{escape(title)}" style="{style}">{shown}</span>'


def _contexts(res: KLResult, name: str) -> str:
    rows = res.contexts(name)[:CONTEXT_ROWS]
    if not rows:
        return ""
    rgb = _HEAT["norm" if name.startswith("norm_") else "kl"]
    items = []
    for row in rows:
        values = [v for v in row["values"] if v is not None and math.isfinite(v)]
        top = max(values, default=0.0)
        spans = "".join(_heat_span(tok, val, top, rgb, j == row["peak"])
                        for j, (tok, val) in enumerate(zip(row["tokens"], row["values"],
                                                           strict=True)))
        items.append(
            f"<li><div style='font-family:monospace;white-space:pre-wrap'>{spans}</div>"
            f"<small>{escape(stat_label(name))} {row['score']:.4g} at text {row['text_index']},"
            f" position {row['position']}; next token: finetuned {_token(row['ft_next'])}, "
            f"base {_token(row['base_next'])}</small></li>")
    return (f"<h3>Highest {escape(stat_label(name))} contexts</h3><p class='note'>Colour: the "
            "value at each token (the distribution after reading it), scaled to the context's "
            "maximum; the outlined token is the ranked position.</p><ol>"
            + "".join(items) + "</ol>")


def render_section(run_dir: str | Path) -> str:
    """HTML fragment for the per-token KL run in ``run_dir`` (reads ``summary.json``)."""
    res = KLResult.load(run_dir)
    layers = ", ".join(map(str, res.layers))
    readout = "" if res.readout_layer is None else \
        f" (readout layer {res.readout_layer} chosen by ADL's rule)"
    parts = ['<section class="dl-kl"><h2>Per-token KL</h2>',
             f"<p>{escape(res.finetuned)} vs {escape(res.base)}: {res.n_texts} texts, "
             f"{res.n_positions} positions, {res.vocab} shared tokens; positions ranked by "
             f"{escape(stat_label(res.divergence))}; activation norms at layers "
             f"{escape(layers)}{escape(readout)}.</p>"]
    if res.vocab_note:
        parts.append(f"<p class='note'>{escape(res.vocab_note)}</p>")
    if res.no_difference:
        parts.append("<p><strong>No difference between the models</strong>: the KL is exactly "
                     "0 at every position and the activations are identical.</p>")
        return "".join(parts) + "</section>"
    parts.append(_stats_table(res))
    charts = [_histogram(res.histograms.get(name, []), res.hist_edges,
                         f"{stat_label(name)}: histogram (log bins)")
              for name in (res.divergence, *(f"norm_{layer}" for layer in res.layers))]
    charts.append(_line(res.per_position.get(res.divergence, []),
                        f"mean {stat_label(res.divergence)} per position"))
    parts.append("<div>" + "".join(c for c in charts if c) + "</div>")
    parts.append(_fingerprint(res.fingerprint))
    parts.append(_contexts(res, res.divergence))
    for layer in res.layers:
        parts.append(_contexts(res, f"norm_{layer}"))
    return "".join(parts) + "</section>"
