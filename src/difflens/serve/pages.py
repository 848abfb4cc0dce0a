"""HTML of the app's pages, its stylesheet and its one script (no build step, no CDN).

Server-rendered text goes through ``html.escape``; the script inserts every model and user
string with ``textContent`` (never ``innerHTML``), so markup in a prompt or in a continuation
is shown as text.
"""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Any
from urllib.parse import quote

CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #222; }
h1 { font-size: 1.4rem; } h2 { font-size: 1.05rem; margin: .2rem 0; }
table { border-collapse: collapse; } td, th { padding: .25rem .7rem; text-align: left;
  border-bottom: 1px solid #ddd; }
.controls { display: grid; grid-template-columns: 12rem 1fr; gap: .4rem .8rem;
  max-width: 60rem; align-items: center; }
textarea { width: 100%; min-height: 4rem; font: inherit; }
.columns { display: grid; grid-template-columns: repeat(4, 1fr); gap: .8rem; margin-top: 1rem; }
.col { border: 1px solid #ccc; border-radius: 6px; padding: .5rem; min-height: 8rem; }
.out { white-space: pre-wrap; word-break: break-word; font-family: ui-monospace, monospace;
  font-size: .85rem; }
.col[data-state="running"] { border-color: #4a7; }
.note { color: #777; font-size: .8rem; }
.kl { border-radius: 2px; }
.error { color: #a00; font-weight: 600; }
#status { font-weight: 600; }
"""

JS = r"""
"use strict";
const $ = (id) => document.getElementById(id);
const COLUMNS = ["base", "finetuned", "amplified", "steered"];

function klColour(kl) {
  // 0 nats: white; 2+ nats: saturated orange (alpha grows with KL).
  const a = Math.max(0, Math.min(1, kl / 2));
  return "rgba(255, 140, 0, " + a.toFixed(3) + ")";
}

function setStatus(state, text) {
  const s = $("status");
  s.dataset.state = state;
  s.textContent = text;
}

function column(name) { return document.querySelector('.col[data-column="' + name + '"]'); }

function handle(ev) {
  if (ev.type === "status") {
    if (ev.state === "queued") setStatus("queued", "queued (" + ev.ahead + " ahead)");
    else setStatus("running", "generating…");
    for (const c of COLUMNS) column(c).dataset.state = ev.state;
  } else if (ev.type === "prompt") {
    $("sent").textContent = ev.text;
  } else if (ev.type === "token") {
    const out = column(ev.column).querySelector(".out");
    if (ev.text !== undefined) out.textContent = ev.text;
    else out.textContent += ev.append;
  } else if (ev.type === "column_done") {
    column(ev.column).dataset.state = "done";
  } else if (ev.type === "note") {
    column(ev.column).querySelector(".note").textContent = ev.text;
  } else if (ev.type === "kl") {
    const out = column(ev.column).querySelector(".out");
    out.replaceChildren();
    for (const [piece, kl] of ev.tokens) {
      const span = document.createElement("span");
      span.className = "kl";
      span.textContent = piece;
      span.style.backgroundColor = klColour(kl);
      span.title = "KL(p_ft ‖ p_base) = " + kl.toFixed(3) + " nats";
      out.appendChild(span);
    }
    column(ev.column).querySelector(".note").textContent =
      "colour: per-token KL(p_ft ‖ p_base), darker = larger (hover for nats)";
  } else if (ev.type === "done") {
    setStatus("done", "done in " + ev.total_s + " s (first token after " +
              ev.first_token_s + " s)");
  } else if (ev.type === "error") {
    setStatus("error", "error: " + ev.error);
  }
}

async function run() {
  const body = {
    prompt: $("prompt").value,
    amplify_alpha: parseFloat($("amp").value),
    steer_alpha: parseFloat($("steer").value),
    max_new_tokens: parseInt($("tokens").value, 10),
  };
  $("sent").textContent = "";
  for (const c of COLUMNS) {
    column(c).querySelector(".out").textContent = "";
    column(c).querySelector(".note").textContent = "";
    column(c).dataset.state = "waiting";
  }
  setStatus("sending", "sending…");
  let response;
  try {
    response = await fetch("/api/generate", {method: "POST", body: JSON.stringify(body),
                                             headers: {"Content-Type": "application/json"}});
  } catch (err) { setStatus("error", "error: " + err); return; }
  if (!response.ok) {
    let reason = response.statusText;
    try { reason = (await response.json()).error; } catch (err) { /* keep the status text */ }
    setStatus("error", "error: " + reason);
    return;
  }
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, {stream: true});
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const chunk = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of chunk.split("\n")) {
        if (line.startsWith("data: ")) handle(JSON.parse(line.slice(6)));
      }
    }
  }
  if ($("status").dataset.state !== "done" && $("status").dataset.state !== "error")
    setStatus("error", "error: the connection closed early");
}

function showValue(input, label) {
  const update = () => { label.textContent = input.value; };
  input.addEventListener("input", update);
  update();
}

async function init() {
  showValue($("amp"), $("amp-value"));
  showValue($("steer"), $("steer-value"));
  $("go").addEventListener("click", run);
  const info = await (await fetch("/api/info")).json();
  $("tokens").max = info.limits.max_new_tokens;
  $("prompt").maxLength = info.limits.max_prompt_chars;
  $("models").textContent = "base: " + info.base + " · finetuned: " + info.finetuned +
    " · steering: " + (info.steering || "none");
  const pick = $("shipped");
  for (const text of info.prompts || []) {
    const option = document.createElement("option");
    option.value = text;
    option.textContent = text;
    pick.appendChild(option);
  }
  pick.addEventListener("change", () => { if (pick.value) $("prompt").value = pick.value; });
  document.body.dataset.ready = "1";
}

init();
"""

STATIC = {"play.js": ("text/javascript", JS), "style.css": ("text/css", CSS)}


def _page(title: str, body: str, head: str = "") -> str:
    return ("<!doctype html><html lang=en><head><meta charset=utf-8>"
            f"<title>{escape(title)}</title><link rel=stylesheet href=/static/style.css>{head}"
            f"</head><body>{body}</body></html>")


def _nav() -> str:
    return '<p><a href="/">runs</a> · <a href="/play">playground</a></p>'


def index_page(root: Path, runs: list[tuple[str, str, bool]]) -> str:
    """The run list: path, kind, link to the report (served from the run directory)."""
    rows = []
    for rel, kind, has_report in runs:
        link = (f'<a href="/runs/{escape(quote(rel))}/report.html">report</a>' if has_report
                else f"no report.html (run <code>difflens report {escape(rel)}</code>)")
        rows.append(f"<tr><td>{escape(rel)}</td><td>{escape(kind)}</td><td>{link}</td></tr>")
    table = ("<table><tr><th>run</th><th>kind</th><th></th></tr>" + "".join(rows) + "</table>"
             if rows else "<p>No run directories (with a run.json) here yet.</p>")
    return _page("difflens runs", f"<h1>difflens runs</h1>{_nav()}"
                                  f"<p>Runs under <code>{escape(str(root))}</code>:</p>{table}")


def play_page(limits: Any) -> str:
    body = f"""
<h1>difflens playground</h1>{_nav()}
<p id=models class=note></p>
<div class=controls>
  <label for=shipped>shipped chat prompt</label>
  <select id=shipped><option value="">(choose one, or type below)</option></select>
  <label for=prompt>prompt</label>
  <textarea id=prompt maxlength={int(limits.max_prompt_chars)}></textarea>
  <label for=amp>amplification α <span id=amp-value></span></label>
  <input id=amp type=range min=-1 max=8 step=0.25 value=1>
  <label for=steer>steering β (× ν<sub>ft</sub>) <span id=steer-value></span></label>
  <input id=steer type=range min=-8 max=8 step=0.25 value=2>
  <label for=tokens>new tokens</label>
  <input id=tokens type=number min=1 max={int(limits.max_new_tokens)}
         value={min(32, int(limits.max_new_tokens))}>
  <span></span><span><button id=go>generate</button> <span id=status data-state=idle></span></span>
</div>
<p class=note>prompt as the models see it (chat template applied):</p>
<pre id=sent class=out></pre>
<div class=columns>
  <div class=col data-column=base><h2>base</h2><div class=note></div><div class=out></div></div>
  <div class=col data-column=finetuned><h2>finetuned</h2><div class=note></div>
    <div class=out></div></div>
  <div class=col data-column=amplified><h2>amplified (α)</h2><div class=note></div>
    <div class=out></div></div>
  <div class=col data-column=steered><h2>ADL-steered (β)</h2><div class=note></div>
    <div class=out></div></div>
</div>
<script src=/static/play.js></script>"""
    return _page("difflens playground", body)


def message_page(title: str, text: str, head: str = "") -> str:
    return _page(title, f"<h1>{escape(title)}</h1>{_nav()}<p>{escape(text)}</p>", head)


def loading_page() -> str:
    return message_page("Loading models", "The models are loading; this page reloads itself.",
                        head='<meta http-equiv="refresh" content="2">')


def failed_page(reason: str) -> str:
    """The page shown when the models could not be loaded: the one-line reason."""
    return _page("difflens: models failed to load",
                 "<h1>The models failed to load</h1>"
                 f"<p class=error id=reason>{escape(reason)}</p>"
                 "<p>Fix the model flags of <code>difflens serve</code> and start it again; "
                 'the <a href="/">run list</a> still works.</p>')
