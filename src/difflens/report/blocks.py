"""Shared pieces of the HTML reports: the stylesheet and the token table.

Used by the run report (:mod:`difflens.report.page` and its sections) and the evaluation
report; model- and corpus-derived text goes through :func:`html.escape`.
"""

from __future__ import annotations

from html import escape

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
