"""The self-contained HTML report of a run directory (opens offline; nothing is fetched; the
only script is the dictionary table's optional click-to-sort, and the page works without it).

All model- and corpus-derived text goes through :func:`html.escape`; charts are inline SVG.
"""

from __future__ import annotations

import json
from html import escape
from pathlib import Path
from typing import Any

from difflens.errors import DifflensError
from difflens.io.artifacts import atomic_write_bytes

STYLE = """
body{font-family:system-ui,sans-serif;margin:24px auto;max-width:1100px;color:#222}
h1{font-size:22px}h2{font-size:18px;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:32px}
h3{font-size:15px}table{border-collapse:collapse;font-size:12px;margin:8px 0}
td,th{border:1px solid #ddd;padding:3px 6px;text-align:left;vertical-align:top}
th{background:#f4f4f4}.tok{font-family:ui-monospace,monospace;white-space:pre}
.hit{background:#fff3c4}.note{color:#555;font-size:13px}.pair{display:grid;
grid-template-columns:1fr 1fr;gap:12px}.sample{border:1px solid #ddd;padding:6px;font-size:12px;
white-space:pre-wrap;margin:4px 0;background:#fafafa}.flag{color:#b00;font-weight:bold}
"""


def render_report(run_dir: Path | str, out: Path | str | None = None) -> Path:
    """Write ``report.html`` for a run directory and return its path."""
    run = Path(run_dir)
    meta_path = run / "run.json"
    if not meta_path.exists():
        raise DifflensError(f"{run} is not a difflens run directory (no run.json); "
                            "give the directory a difflens command wrote")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    kind = meta.get("kind", "")
    sections: list[str] = []
    if kind == "adl":
        from difflens.report.adl_section import render_adl

        sections.append(render_adl(run))
    elif kind == "mining":
        from difflens.methods.mining.report import render_section

        sections.append(render_section(run))
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


def token_table(columns: dict[str, list[str]], highlight: set[str] | None = None,
                limit: int = 20) -> str:
    """A table with one column of tokens per heading (tokens escaped, hits highlighted)."""
    highlight = highlight or set()
    heads = "".join(f"<th>{escape(h)}</th>" for h in columns)
    rows = []
    for i in range(min(limit, max((len(c) for c in columns.values()), default=0))):
        cells = []
        for tokens in columns.values():
            tok = tokens[i] if i < len(tokens) else ""
            cls = "tok hit" if tok in highlight else "tok"
            cells.append(f"<td class='{cls}'>{escape(repr(tok)[1:-1])}</td>")
        rows.append(f"<tr><td>{i + 1}</td>{''.join(cells)}</tr>")
    return f"<table><tr><th>#</th>{heads}</tr>{''.join(rows)}</table>"


def read_optional(run: Path, name: str) -> Any:
    path = run / name
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None
