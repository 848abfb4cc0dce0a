"""The amplification section of the HTML report: rate and coherence vs α, samples per α.

Every sample is model text and goes through :func:`html.escape`.
"""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Any

from difflens.methods.amplify.result import AmplifyResult
from difflens.report.svg import interval_chart, line_chart

SAMPLES_SHOWN = 6  # samples listed per α


def _pct(ci: dict[str, Any] | None) -> str:
    if ci is None:
        return "not measured"
    return (f"{100 * ci['mean']:.0f}% [{100 * ci['ci_low']:.0f}, {100 * ci['ci_high']:.0f}] "
            f"(n={ci.get('n', '?')})")


def _table(res: AmplifyResult) -> str:
    rows = []
    for row in res.per_alpha:
        score = row.get("score")
        score_cell = (f"{score['mean']:.3f} [{score['ci_low']:.3f}, {score['ci_high']:.3f}]"
                      if score else "—")
        rows.append(f"<tr><td>{row['alpha']:g}</td><td>{_pct(row['rate'])}</td>"
                    f"<td>{_pct(row['coherence'])}</td><td>{score_cell}</td>"
                    f"<td>{row['tokens']}</td><td>{row['seconds']:.1f}</td></tr>")
    return ("<table><tr><th>α</th><th>rate of the finetune's domain</th><th>coherent</th>"
            "<th>similarity to finetune docs</th><th>tokens</th><th>seconds</th></tr>"
            + "".join(rows) + "</table>")


def _charts(res: AmplifyResult) -> str:
    labels = [f"{row['alpha']:g}" for row in res.per_alpha]
    keys = [k for k in ("rate", "coherence") if all(row[k] for row in res.per_alpha)]
    series = {key: {"value": [row[key]["mean"] for row in res.per_alpha],
                    "95% low": [row[key]["ci_low"] for row in res.per_alpha],
                    "95% high": [row[key]["ci_high"] for row in res.per_alpha]}
              for key in keys}
    titles = {"rate": ("Rate of the finetune's domain vs α", "rate"),
              "coherence": ("Coherent share vs α", "coherent")}
    parts = [line_chart(series[k], labels, titles[k][0], y_label=titles[k][1]) for k in keys]
    if "rate" in keys:
        parts.append(interval_chart([(f"α = {row['alpha']:g}", row["rate"]["ci_low"],
                                      row["rate"]["mean"], row["rate"]["ci_high"])
                                     for row in res.per_alpha],
                                    "Rate with 95% bootstrap intervals"))
    return "".join(f"<div>{p}</div>" for p in parts)


def _search(res: AmplifyResult) -> str:
    if not res.search:
        return "<p>Largest coherent α: not searched (--no-search).</p>"
    s = res.search
    if res.largest_coherent_alpha is None:
        return f"<p>Largest coherent α: none found ({escape(str(s.get('reason') or ''))}).</p>"
    bound = (" — every decision passed: the boundary may lie above α_max"
             if s.get("upper_bound_coherent") else "")
    tried = ", ".join(f"{d['alpha']:g} {'✓' if d['coherent'] else '✗'}"
                      for d in s.get("decisions", []))
    return (f"<p>Largest coherent α: <strong>{res.largest_coherent_alpha:g}</strong> "
            f"(bisection of [0, {s['alpha_max']:g}] to ±{s['tolerance']:g}, ≥ "
            f"{100 * s['coherent_fraction']:.0f}% coherent on {s['search_prompts']} prompts"
            f"{escape(bound)}; decisions: {escape(tried)}).</p>")


def _samples(res: AmplifyResult) -> str:
    parts = ["<h3>Samples</h3>"]
    for alpha in res.alphas:
        try:
            texts = res.samples(alpha)
        except Exception:  # a deleted samples file: the figures above still stand
            continue
        items = "".join(f"<li><pre class='note'>{escape(t)}</pre></li>"
                        for t in texts[:SAMPLES_SHOWN])
        parts.append(f"<details><summary>α = {alpha:g} ({len(texts)} samples)</summary>"
                     f"<ol>{items}</ol></details>")
    return "".join(parts)


def render_section(run_dir: str | Path) -> str:
    """HTML fragment for the amplification run in ``run_dir`` (reads ``summary.json``)."""
    res = AmplifyResult.load(run_dir)
    rule = res.rate_rule.get("rule", "")
    parts = ['<section class="dl-amplify"><h2>Logit-diff amplification</h2>',
             f"<p>{escape(res.finetuned)} vs {escape(res.base)}: samples from softmax(z_ft + "
             f"α(z_ft − z_base)) over {res.vocab} tokens. Rate rule: {escape(str(rule))} "
             f"({escape(str(res.rate_rule.get('backend', '')))}); coherence: "
             f"{escape(str(res.coherence_grader.get('backend', '')))} grader.</p>"]
    if res.description:
        parts.append(f"<p class='note'>Finetune: {escape(res.description)}</p>")
    parts += [f"<p class='note'>{escape(n)}</p>" for n in res.notes]
    parts += [_table(res), _charts(res), _search(res), _samples(res), "</section>"]
    return "".join(parts)
