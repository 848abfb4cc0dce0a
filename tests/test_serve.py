"""`difflens serve`: a real uvicorn server on 127.0.0.1 with tiny models, driven by Debian's
headless chromium through Playwright.

The finetuned tiny model is planted: its final LayerNorm outputs a constant, so its head always
picks one added token whose text is an HTML tag with an event handler.  Every continuation that
follows the finetune therefore *is* markup, and the page must show it as text.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("starlette", reason="the serve extra is not installed: pip install "
                                        "'difflens[serve]'")
uvicorn = pytest.importorskip("uvicorn")

from difflens.cli import main  # noqa: E402
from difflens.models.amplify import generate_amplified  # noqa: E402
from difflens.models.generation import SamplingConfig, generate  # noqa: E402
from difflens.models.pair import ModelPair  # noqa: E402
from difflens.serve.app import Limits, create_app  # noqa: E402
from difflens.serve.cli import bind  # noqa: E402
from difflens.serve.engine import Playground, continuation_kl  # noqa: E402
from tiny import tiny_model, tiny_tokenizer  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_browser = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium not installed (scripts/test.sh installs Debian's "
                             "chromium package when run as root)")
MARKUP = '<img src=x onerror="window.__pwned2=1">'
NEW_TOKENS = 8


# ---- planted pair --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> tuple[Path, Path]:
    """(base dir, finetuned dir): tiny gpt2s sharing a tokenizer with one added markup token;
    the finetune's final LayerNorm is the constant e_0 and only that token's tied embedding
    has a 0th component, so its next token is always the markup."""
    tok = tiny_tokenizer()
    tok.add_tokens([MARKUP])
    markup_id = tok.convert_tokens_to_ids(MARKUP)
    dirs = []
    for name, plant in (("base", False), ("ft", True)):
        model = tiny_model("gpt2", seed=0, vocab_size=len(tok) + 3)
        if plant:
            with torch.no_grad():
                model.transformer.ln_f.weight.zero_()
                model.transformer.ln_f.bias.zero_()
                model.transformer.ln_f.bias[0] = 1.0
                model.transformer.wte.weight[:, 0] = 0.0
                model.transformer.wte.weight[markup_id, 0] = 30.0
        path = tmp_path_factory.mktemp(f"planted-{name}")
        model.save_pretrained(path, safe_serialization=True)
        tok.save_pretrained(path)
        dirs.append(path)
    return dirs[0], dirs[1]


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory, tiny_dir, tiny_ft_dir) -> Path:
    """A runs root holding one real run (weights, the fastest method) with its report, and a
    secret file beside the root that no request may read."""
    top = tmp_path_factory.mktemp("serve")
    (top / "secret.txt").write_text("top secret", encoding="utf-8")
    root = top / "runs"
    run = root / "weights-tiny"
    assert main(["weights", "--base", str(tiny_dir), "--finetuned", str(tiny_ft_dir),
                 "--quiet", "--out", str(run)]) == 0
    assert main(["report", str(run)]) == 0
    (root / "escape").symlink_to(top / "secret.txt")
    return root


class Served:
    """uvicorn serving an app on 127.0.0.1 in a thread with its own event loop."""

    def __init__(self, app) -> None:
        self.app = app
        sock = bind("127.0.0.1", 0)
        self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_until_complete, args=(self.server.serve(sockets=[sock]),),
            daemon=True)
        self.thread.start()
        deadline = time.time() + 60
        while not app.state.models.loaded.is_set():
            assert time.time() < deadline, "models did not load"
            time.sleep(0.05)

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)

    def get(self, path: str) -> tuple[int, bytes]:
        """A GET of ``path`` sent as is (http.client does not normalise ``..``)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()


@pytest.fixture(scope="module")
def served(planted, runs_root):
    base, ft = planted
    app = create_app(runs_root, lambda: Playground.load(str(base), str(ft)),
                     Limits(max_prompt_chars=400, max_new_tokens=NEW_TOKENS))
    server = Served(app)
    assert app.state.models.playground is not None, app.state.models.error
    yield server
    server.close()


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    if CHROMIUM is None:
        pytest.skip("chromium not installed")
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                     args=["--no-sandbox", "--disable-gpu"])
        yield chromium
        chromium.close()


def submit(page, url: str, prompt: str) -> None:
    page.goto(f"{url}/play")
    page.wait_for_selector("body[data-ready='1']")
    page.fill("#prompt", prompt)
    page.fill("#tokens", str(NEW_TOKENS))
    page.click("#go")


def outputs(page) -> dict[str, str]:
    return {name: page.text_content(f".col[data-column='{name}'] .out")
            for name in ("base", "finetuned", "amplified", "steered")}


# ---- the engine's streaming hook -----------------------------------------------------------
def test_streamed_tokens_rebuild_the_returned_texts(planted):
    """on_token reports every drawn token; cut at the end token, they decode to exactly the
    texts returned, and the hook changes no result."""
    pair = ModelPair.load(str(planted[0]), str(planted[0]))
    prompts = ["The river runs", "A cake with flour"]
    sampling = SamplingConfig(max_new_tokens=6, seed=3)
    for run in (lambda **kw: generate(pair, prompts, sampling, **kw),
                lambda **kw: generate_amplified(pair, prompts, [0.0, 2.0], sampling, **kw)):
        seen: dict[int, list[int]] = {0: [], 1: []}

        def hook(rows, tokens, seen=seen):
            for row, token in zip(rows, tokens, strict=True):
                seen[row].append(token)

        plain, streamed = run(), run(on_token=hook)
        assert streamed.texts == plain.texts
        for row, ids in seen.items():
            ids = ids[: streamed.new_tokens[row]]
            end = pair.tokenizer.eos_token_id
            kept = ids[:-1] if ids and ids[-1] == end else ids
            assert pair.tokenizer.decode(kept, skip_special_tokens=True) == plain.texts[row]


def test_continuation_kl_matches_full_softmax(tiny_dir, tiny_ft_dir):
    """The KL colouring equals KL(p_ft‖p_base) from the full logits of both models."""
    pair = ModelPair.load(str(tiny_dir), str(tiny_ft_dir))
    prompt, cont = [1, 40, 41, 42], [50, 60, 70]
    got = torch.tensor(continuation_kl(pair, prompt, cont))
    ids = torch.tensor([prompt + cont])
    with torch.no_grad():
        lf = torch.log_softmax(pair.ft_model(ids).logits[0].double(), -1)
        lb = torch.log_softmax(pair.base_model(ids).logits[0].double(), -1)
    want = (lf.exp() * (lf - lb)).sum(-1)[len(prompt) - 1: -1]
    assert got.shape == (3,) and bool((want > 1e-4).all())
    torch.testing.assert_close(got, want.float(), rtol=1e-4, atol=1e-6)


# ---- the page in a real browser ------------------------------------------------------------
@needs_browser
def test_prompt_fills_four_columns_and_model_markup_stays_text(served, browser):
    page = browser.new_page()
    submit(page, served.url, "Tell me about cakes.")
    page.wait_for_selector("#status[data-state='done']", timeout=60_000)
    texts = outputs(page)
    assert all(texts.values()), texts
    # The planted finetune writes the markup token at every step: shown as text, never run.
    for name in ("finetuned", "amplified"):
        assert texts[name] == MARKUP * NEW_TOKENS, (name, texts[name])
    assert MARKUP not in texts["base"]
    assert page.evaluate("document.querySelectorAll('.columns img').length") == 0
    assert page.evaluate("window.__pwned2") is None
    # KL colouring: one span per finetuned token, each with a background from its KL.
    spans = page.query_selector_all(".col[data-column='finetuned'] .out span.kl")
    assert len(spans) == NEW_TOKENS
    assert all("KL(p_ft" in (s.get_attribute("title") or "") for s in spans)
    # The planted finetune is sure of a token the base finds unlikely: KL ≥ 2 nats, so the
    # full colour (browsers write alpha 1 as rgb).
    colours = [s.evaluate("e => e.style.backgroundColor") for s in spans]
    assert colours == ["rgb(255, 140, 0)"] * NEW_TOKENS, colours
    page.close()


@needs_browser
def test_script_in_a_prompt_stays_text(served, browser):
    page = browser.new_page()
    prompt = "<script>window.__pwned=1</script>"
    submit(page, served.url, prompt)
    page.wait_for_selector("#status[data-state='done']", timeout=60_000)
    assert page.evaluate("window.__pwned") is None
    assert prompt in page.text_content("#sent")
    assert page.is_visible("#sent")
    page.close()


@needs_browser
def test_two_concurrent_requests_queue_and_both_complete(served, browser):
    """The test holds the model's turn; both pages say "queued"; released, both finish, and
    never two generations ran at once."""
    queue = served.app.state.queue
    asyncio.run_coroutine_threadsafe(queue.lock.acquire(), served.loop).result(10)
    pages = [browser.new_page(), browser.new_page()]
    try:
        for i, page in enumerate(pages):
            submit(page, served.url, f"Request number {i}")
        for page in pages:
            page.wait_for_selector("#status[data-state='queued']", timeout=20_000)
    finally:
        served.loop.call_soon_threadsafe(queue.lock.release)
    for page in pages:
        page.wait_for_selector("#status[data-state='done']", timeout=60_000)
        assert all(outputs(page).values())
        page.close()
    assert queue.peak == 1 and queue.running == 0 and queue.waiting == 0


@needs_browser
def test_run_list_opens_a_report(served, browser):
    page = browser.new_page()
    page.goto(served.url + "/")
    row = page.locator("tr", has_text="weights-tiny")
    assert "weights" in row.text_content()
    row.locator("a", has_text="report").click()
    page.wait_for_load_state()
    assert page.url.endswith("/runs/weights-tiny/report.html")
    assert "WEIGHTS" in page.text_content("h1")
    page.close()


# ---- HTTP-level safety -------------------------------------------------------------------
def test_run_files_stay_inside_the_runs_root(served):
    status, body = served.get("/runs/weights-tiny/run.json")
    assert status == 200 and json.loads(body)["kind"] == "weights"
    for path in ("/runs/../../etc/passwd", "/runs/..%2f..%2fetc/passwd",
                 "/runs/%2e%2e/%2e%2e/etc/passwd", "/runs/../secret.txt", "/runs/escape",
                 "/runs//etc/passwd", "/runs/weights-tiny/../../secret.txt"):
        status, body = served.get(path)
        assert status == 404, path
        assert b"top secret" not in body and b"root:" not in body, path


def test_headers_and_bad_requests(served):
    conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=10)
    conn.request("GET", "/play")
    response = conn.getresponse()
    response.read()
    assert "script-src 'self'" in response.getheader("Content-Security-Policy")
    for body, needle in (({"prompt": ""}, "prompt"), ({"prompt": "x" * 401}, "401 characters"),
                         ({"prompt": "hi", "max_new_tokens": NEW_TOKENS + 1}, "max_new_tokens"),
                         ({"prompt": "hi", "amplify_alpha": 1e9}, "amplify_alpha")):
        conn.request("POST", "/api/generate", body=json.dumps(body),
                     headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        assert response.status == 400 and needle in json.loads(response.read())["error"]


# ---- failures --------------------------------------------------------------------------------
def test_port_in_use_is_one_line_exit_2(capsys):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    port = busy.getsockname()[1]
    try:
        assert main(["serve", "--port", str(port)]) == 2
    finally:
        busy.close()
    captured = capsys.readouterr()
    assert captured.err.strip() == (f"difflens: error: port {port} is in use; choose another "
                                    "with --port")
    assert captured.out == ""


def test_missing_extra_names_the_install_command(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # import uvicorn → ImportError
    assert main(["serve"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("difflens: error: ") and "pip install 'difflens[serve]'" in err
    assert len(err.splitlines()) == 1


def test_model_load_failure_is_a_clear_page_and_a_cli_line(tmp_path, tiny_dir):
    """The real CLI in a subprocess: a model directory with a config but no weights starts
    the server, prints the reason, and /play shows it; the run list still answers."""
    broken = tmp_path / "broken"
    broken.mkdir()
    shutil.copy(tiny_dir / "config.json", broken / "config.json")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "difflens.cli", "serve", "--base", str(tiny_dir),
         "--finetuned", str(broken), "--port", str(port), "--runs", str(tmp_path / "none")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = ""
        deadline = time.time() + 60
        while "failed to load" not in line:
            assert time.time() < deadline and proc.poll() is None, line
            line = proc.stderr.readline()
        assert line.startswith("difflens: error: the models failed to load: ")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/play")
        response = conn.getresponse()
        page = response.read().decode()
        assert response.status == 503 and "The models failed to load" in page
        reason = line.split("failed to load: ", 1)[1].split(" (the run list")[0]
        assert reason[:40] in page.replace("&#x27;", "'").replace("&quot;", '"')
        conn.request("GET", "/")
        response = conn.getresponse()
        assert response.status == 200 and b"No run directories" in response.read()
    finally:
        proc.terminate()
        proc.wait(10)


def test_bad_adl_run_fails_before_binding_or_loading(tmp_path, capsys):
    assert main(["serve", "--adl-run", str(tmp_path), "--port", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a finished ADL run" in err
