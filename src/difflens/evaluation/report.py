"""The HTML report of ``difflens eval``: the agent table with intervals and the zoo's method-level
signals (self-contained, inline SVG; every token and name escaped)."""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Any

from difflens.io.artifacts import atomic_write_bytes
from difflens.report.blocks import STYLE, token_table
from difflens.report.svg import bar_chart, interval_chart, line_chart

READOUT_TITLES = {"adl_logit_lens": "ADL logit lens", "adl_patchscope": "ADL Patchscope",
                  "mining": "Diff Mining"}


def agent_section(summary: list[dict[str, Any]]) -> str:
    """Mean grade and grade ≥ 2 / ≥ 4 rates per agent × budget, with 95% bootstrap intervals."""
    if not summary:
        return ("<h2>Agents</h2><p class='note'>No agent runs (no LLM endpoint was given): "
                "method-level evaluation only.</p>")
    parts = ["<h2>Agents</h2>"]
    for key, title in (("grade", "mean grade (1-5)"), ("ge2", "share graded ≥ 2"),
                       ("ge4", "share graded ≥ 4")):
        rows = [(f"{r['agent']} i={r['budget']}", r[key]["low"], r[key]["value"], r[key]["high"])
                for r in summary if r.get(key)]
        if rows:
            parts.append(interval_chart(rows, f"{title}, 95% bootstrap CI"))
    return "\n".join(parts)


def zoo_section(zoo: dict[str, Any]) -> str:
    """Domain-word hits per organism and readout, the cross-domain control and the ablation."""
    organisms = zoo.get("organisms") or {}
    if not organisms:
        return "<h2>Method-level evaluation</h2><p class='note'>No organism has method runs.</p>"
    parts = ["<h2>Method-level evaluation over the zoo</h2>",
             f"<p class='note'>Domain words among the top-{zoo['top']} tokens of each readout "
             "(own domain's keywords), and the most any other organism's keywords match the same "
             "tokens (a readout that names every domain is not evidence).</p>"]
    head = "".join(f"<th>{escape(t)}</th>" for t in READOUT_TITLES.values())
    rows = []
    for name, s in organisms.items():
        cells = []
        for readout in READOUT_TITLES:
            if readout not in s["hits"]:
                cells.append("<td>-</td>")
                continue
            other = max(s["cross_hits"][readout].values(), default=0)
            cells.append(f"<td>{len(s['hits'][readout])} / {other}</td>")
        norm = s.get("relative_norm")
        rows.append(f"<tr><td>{escape(name)}</td><td>{escape(s['type'])}</td>"
                    f"<td>{s['mix_ratio']:g}</td>{''.join(cells)}"
                    f"<td>{'-' if norm is None else f'{norm:.3f}'}</td></tr>")
    parts.append(f"<table><tr><th>organism</th><th>type</th><th>mix</th>{head}"
                 f"<th>‖δ̄‖/ν_ft</th></tr>{''.join(rows)}</table>")
    bars = {name: {f"{READOUT_TITLES[r]} (own)": len(s["hits"][r]) for r in READOUT_TITLES
                   if r in s["hits"]}
            | {f"{READOUT_TITLES[r]} (best other)": max(s["cross_hits"][r].values(), default=0)
               for r in READOUT_TITLES if r in s["hits"]}
            for name, s in organisms.items()}
    parts.append(bar_chart(bars, f"domain words among the top {zoo['top']} tokens",
                           top=float(zoo["top"])))
    layers = sorted({int(k) for s in organisms.values() for k in s.get("lens_hits_by_layer", {})})
    if layers:
        series = {name: [s["lens_hits_by_layer"].get(str(k), 0) for k in layers]
                  for name, s in organisms.items() if s.get("lens_hits_by_layer")}
        parts.append(line_chart(series, [str(k) for k in layers],
                                "logit lens of δ̄: domain words in the top 20, per layer",
                                y_label="hits"))
    for row in zoo.get("mixing_ablation") or []:
        items = "".join(f"<li>{escape(k)}: {v[0]:.3g} → {v[1]:.3g}</li>"
                        for k, v in row.items() if isinstance(v, list))
        parts.append(f"<h3>Mixing ablation: {escape(row['unmixed'])} → {escape(row['mixed'])} "
                     f"(1:{row['mix_ratio']:g})</h3><ul>{items}</ul>")
    for name, s in organisms.items():
        hits = {t for h in s["hits"].values() for t in h}
        columns = {READOUT_TITLES[r]: toks for r, toks in s["tokens"].items()}
        parts.append(f"<h3>{escape(name)}: top tokens (domain words highlighted)</h3>"
                     + token_table(columns, hits))
    return "\n".join(parts)


def render_eval_report(out: Path | str, summary: list[dict[str, Any]],
                       zoo: dict[str, Any]) -> Path:
    """Write ``<out>/report.html`` and return its path."""
    body = agent_section(summary) + zoo_section(zoo)
    html = ("<!doctype html><html><head><meta charset='utf-8'><title>difflens eval report"
            f"</title><style>{STYLE}</style></head><body><h1>difflens — evaluation</h1>{body}"
            "</body></html>")
    path = Path(out) / "report.html"
    atomic_write_bytes(path, html.encode("utf-8"))
    return path
