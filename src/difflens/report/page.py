"""The self-contained HTML report of a run directory (opens offline; nothing is fetched; the
only script is the dictionary table's optional click-to-sort, and the page works without it).

All model- and corpus-derived text goes through :func:`html.escape`; charts are inline SVG.
"""

from __future__ import annotations

import json
from html import escape
from pathlib import Path

from difflens.errors import DifflensError
from difflens.io.artifacts import atomic_write_bytes, read_json
from difflens.report.blocks import STYLE


def render_report(run_dir: Path | str, out: Path | str | None = None) -> Path:
    """Write ``report.html`` for a run directory and return its path."""
    run = Path(run_dir)
    meta_path = run / "run.json"
    if not meta_path.exists():
        raise DifflensError(f"{run} is not a difflens run directory (no run.json); "
                            "give the directory a difflens command wrote")
    meta = read_json(meta_path, fix="re-run the command that wrote this run")
    kind = meta.get("kind", "")
    sections: list[str] = []
    if kind == "adl":
        from difflens.report.adl_section import render_adl

        sections.append(render_adl(run))
    elif kind == "mining":
        from difflens.methods.mining.report import render_section

        sections.append(render_section(run))
    elif kind == "pca":
        from difflens.methods.pca.report import render_section as render_pca
        from difflens.report.svg import line_chart

        sections.append(render_pca(run, chart=line_chart))
    elif kind == "amplify":
        from difflens.methods.amplify.report import render_section as render_amplify

        sections.append(render_amplify(run))
    elif kind == "kl":
        from difflens.methods.kl.report import render_section as render_kl

        sections.append(render_kl(run))
    elif kind == "weights":
        from difflens.methods.weights.report import render_section as render_weights

        sections.append(render_weights(run))
    elif kind == "dictionary":
        from difflens.methods.dictionary.report import render_section as render_dictionary

        sections.append(render_dictionary(run))
    else:
        raise DifflensError(f"no report renderer for run kind {kind!r} in {run}")
    body = "\n".join(sections)
    config = escape(json.dumps(meta.get("config", {}), indent=1, ensure_ascii=False))
    html = (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>difflens {escape(kind)} report</title><style>{STYLE}</style></head><body>"
        f"<h1>difflens — {escape(kind.upper())} report</h1>{body}"
        f"<h2>Configuration</h2><pre class='note'>{config}</pre></body></html>"
    )
    path = Path(out) if out else run / "report.html"
    atomic_write_bytes(path, html.encode("utf-8"))
    return path
