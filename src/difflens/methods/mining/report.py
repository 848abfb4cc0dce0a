"""The Diff Mining section of the HTML report: token tables, topic bars, example contexts.

Returns an HTML fragment with inline styles (no scripts, no external assets).  Every string
that comes from a model, a tokenizer or a corpus goes through :func:`html.escape`: tokens such
as ``"<script>"`` or ``"&amp;"`` are ordinary vocabulary entries.
"""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Any

from difflens.methods.mining.result import MiningResult

TABLE_ROWS = 30  # rows shown per token table (summary.json keeps 100)
_BAR = ("display:inline-block;height:0.8em;background:{color};width:{width:.1f}%;"
        "vertical-align:middle")


def _token(text: str) -> str:
    """A token shown with its spaces visible (␣) so ' cake' and 'cake' can be told apart."""
    shown = text.replace(" ", "␣").replace("\n", "⏎") or "∅"
    return f"<code>{escape(shown)}</code>"


def _bar(fraction: float, color: str) -> str:
    width = max(0.0, min(1.0, fraction)) * 100
    return (f'<span style="display:inline-block;width:8em;background:#eee">'
            f'<span style="{_BAR.format(color=color, width=width)}"></span></span>')


def _table(rows: list[dict[str, Any]], color: str, relevant: set[str] | None = None) -> str:
    if not rows:
        return "<p><em>none</em></p>"
    top = max(row["rate"] for row in rows) or 1.0
    body = []
    for i, row in enumerate(rows, start=1):
        mark = " ✓" if relevant and (row["token"].strip() or row["token"]) in relevant else ""
        body.append(
            f"<tr><td>{i}</td><td>{_token(row['token'])}{escape(mark)}</td>"
            f"<td>{_bar(row['rate'] / top, color)} {row['rate']:.2f}%</td>"
            f"<td>{row['frac']:.2f}</td><td>{row['avg_diff']:+.3f}</td></tr>")
    return ('<table class="dl-mining-table"><tr><th>#</th><th>token</th>'
            "<th>Top-K occurrence</th><th>sign fraction</th><th>mean Δ</th></tr>"
            + "".join(body) + "</table>")


def _topics(nmf: dict[str, Any] | None) -> str:
    if not nmf:
        return ""
    if nmf.get("skipped"):
        return f"<h3>NMF topics</h3><p><em>skipped: {escape(nmf['skipped'])}</em></p>"
    parts = [f"<h3>NMF topics</h3><p>{nmf['n_topics']} topics over {nmf['n_positions']} "
             f"positions × {nmf['n_tokens']} tokens ({escape(str(nmf['values']))} values, "
             f"relative error {nmf['relative_error']:.3f})</p>"]
    for topic in nmf["topics"]:
        top = max(topic["weights"] or [1.0]) or 1.0
        chips = " ".join(
            f'<span title="{w:.3g}" style="opacity:{0.35 + 0.65 * w / top:.2f}">'
            f"{_token(tok)}</span>" for tok, w in zip(topic["tokens"], topic["weights"],
                                                      strict=True))
        parts.append(
            f'<div class="dl-mining-topic"><strong>topic {topic["topic"]}</strong> '
            f'{_bar(topic["prevalence"], "#4a7bd0")} {100 * topic["prevalence"]:.1f}% '
            f"prevalence, concentration {topic['concentration']:.2f}<br>{chips}</div>")
    cos = nmf.get("cosine") or []
    if len(cos) > 1:
        head = "".join(f"<th>{j}</th>" for j in range(len(cos)))
        rows = "".join(f"<tr><th>{i}</th>" + "".join(f"<td>{v:.2f}</td>" for v in row) + "</tr>"
                       for i, row in enumerate(cos))
        parts.append(f"<p>inter-topic cosine</p><table><tr><th></th>{head}</tr>{rows}</table>")
    return "".join(parts)


def _examples(groups: list[dict[str, Any]], n_tokens: int = 10) -> str:
    items = []
    for group in groups[:n_tokens]:
        lines = "".join(
            f"<li>…{escape(ex['context'][-160:])}<mark>{escape(ex['promoted'])}</mark> "
            f"<small>(Δ {ex['delta']:+.2f}; text {ex['text_index']}, position "
            f"{ex['position']})</small></li>" for ex in group["examples"])
        if lines:
            items.append(f"<li>{_token(group['token'])}<ul>{lines}</ul></li>")
    if not items:
        return ""
    return "<h3>Example contexts</h3><ul class='dl-mining-examples'>" + "".join(items) + "</ul>"


def render_section(run_dir: str | Path) -> str:
    """HTML fragment for the Diff Mining run in ``run_dir`` (reads ``summary.json``)."""
    res = MiningResult.load(run_dir)
    lens = "raw logits" if res.lens == "raw" else f"logit lens at layer {res.layer}"
    parts = [
        '<section class="dl-mining"><h2>Diff Mining</h2>',
        f"<p>{escape(res.finetuned)} vs {escape(res.base)}: {res.n_texts} texts, "
        f"{res.n_positions} positions, {escape(lens)}, K = {res.top_k} of {res.vocab} "
        "tokens.</p>",
    ]
    if res.no_difference:
        parts.append(f"<p><strong>No difference between the models</strong> (max |Δ| = "
                     f"{res.max_abs_delta:.2e}): nothing is promoted or suppressed.</p>")
        return "".join(parts) + "</section>"
    relevant = None
    if res.relevance:
        rel = res.relevance
        relevant = {t for t, ok in zip(rel["tokens"], rel["relevant"], strict=True) if ok}
        parts.append(f"<p>Token relevance: {100 * rel['fraction']:.0f}% of the top "
                     f"{len(rel['tokens'])} promoted tokens relate to the finetune (✓).</p>")
    parts.append("<h3>Promoted tokens</h3>" + _table(res.promoted[:TABLE_ROWS], "#2f9e44",
                                                      relevant))
    parts.append("<h3>Suppressed tokens</h3>" + _table(res.suppressed[:TABLE_ROWS], "#c92a2a"))
    parts.append(_topics(res.topics))
    parts.append(_examples(res.examples))
    return "".join(parts) + "</section>"
