"""The web app (Starlette): run list, run files, the playground and its streaming endpoint.

Safety:

* Every page carries a Content-Security-Policy: the app's own pages run only the app's own
  script file (no inline script), and files served from run directories run no script at all
  (``sandbox``).  All model and user text reaches the page through ``textContent`` (the
  script) or ``html.escape`` (server-rendered pages).
* Run files are served only from inside the runs root: the requested path is resolved (``..``
  and symbolic links included) and refused unless it stays under the resolved root.
* One generation per model at a time: requests wait in a FIFO queue (``asyncio.Lock``), are
  told they are queued (and how many are ahead), and run when their turn comes.
* Prompt length and new tokens are bounded (:class:`Limits`, the CLI's flags).
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Route

from difflens.errors import DifflensError
from difflens.serve import pages
from difflens.serve.engine import Cancelled, Playground, check_request

APP_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
           "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
RUN_FILE_CSP = ("default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
                "base-uri 'none'; form-action 'none'; frame-ancestors 'none'; sandbox")


@dataclass(frozen=True)
class Limits:
    max_prompt_chars: int = 2000
    max_new_tokens: int = 64


class ModelQueue:
    """FIFO turn-taking for the loaded pair: one generation at a time.

    ``waiting``: requests queued now; ``peak``: most generations ever running at once (1).
    """

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.waiting = 0
        self.running = 0
        self.peak = 0


class State:
    """The models as the page sees them: loading, ready or failed (with a one-line reason)."""

    def __init__(self) -> None:
        self.playground: Playground | None = None
        self.error: str | None = None
        self.loaded = threading.Event()

    def load(self, loader: Callable[[], Playground]) -> None:
        try:
            self.playground = loader()
        except DifflensError as exc:
            self.error = str(exc)
        except Exception as exc:  # any load failure becomes the page's one line
            self.error = " ".join(f"{type(exc).__name__}: {exc}".split())
        finally:
            self.loaded.set()


def create_app(runs_root: str | Path, loader: Callable[[], Playground], limits: Limits,
               on_loaded: Callable[[State], None] | None = None) -> Starlette:
    """The app; models load in a background thread when it starts (the run list needs none).

    ``on_loaded(state)`` is called from that thread when loading ends (the CLI prints there).
    """
    root = Path(runs_root).resolve()
    state = State()
    queue = ModelQueue()

    def load() -> None:
        state.load(loader)
        if on_loaded is not None:
            on_loaded(state)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        threading.Thread(target=load, name="difflens-serve-load", daemon=True).start()
        yield

    async def index(request: Request) -> Response:
        return HTMLResponse(pages.index_page(root, find_runs(root)))

    async def run_file(request: Request) -> Response:
        target = inside(root, request.path_params["path"])
        if target is None:
            return HTMLResponse(pages.message_page("Not found", "No such file in the runs "
                                                   "directory."), status_code=404)
        return FileResponse(target, headers={"Content-Security-Policy": RUN_FILE_CSP})

    async def play(request: Request) -> Response:
        if not state.loaded.is_set():
            return HTMLResponse(pages.loading_page(), status_code=503)
        if state.playground is None:
            return HTMLResponse(pages.failed_page(state.error or "unknown error"),
                                status_code=503)
        return HTMLResponse(pages.play_page(limits))

    async def info(request: Request) -> Response:
        from difflens.data.corpus import chat_prompts

        body: dict[str, Any] = {"state": "loading", "limits": limits.__dict__}
        if state.loaded.is_set():
            if state.playground is None:
                body.update(state="failed", error=state.error)
            else:
                body.update(state="ready", prompts=chat_prompts(), **state.playground.info())
        return JSONResponse(body)

    async def generate(request: Request) -> Response:
        playground = state.playground
        if playground is None:
            reason = state.error or "the models are still loading; try again shortly"
            return JSONResponse({"error": reason}, status_code=503)
        try:
            data = await request.json()
        except ValueError:
            return JSONResponse({"error": "the request body must be JSON"}, status_code=400)
        try:
            job = check_request(data, limits.max_prompt_chars, limits.max_new_tokens)
        except DifflensError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return StreamingResponse(stream(playground, job, queue), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store"})

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in pages.STATIC:
            return Response("not found", status_code=404, media_type="text/plain")
        media, text = pages.STATIC[name]
        return Response(text, media_type=media)

    app = Starlette(routes=[
        Route("/", index), Route("/play", play), Route("/api/info", info),
        Route("/api/generate", generate, methods=["POST"]),
        Route("/static/{name}", static), Route("/runs/{path:path}", run_file),
    ], lifespan=lifespan, middleware=[Middleware(SecurityHeaders)])
    app.state.models = state
    app.state.queue = queue
    return app


class SecurityHeaders:
    """ASGI middleware: the app's CSP (unless the response set its own) and no sniffing."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {name.lower() for name, _ in headers}
                if b"content-security-policy" not in names:
                    headers.append((b"content-security-policy", APP_CSP.encode()))
                headers += [(b"x-content-type-options", b"nosniff"),
                            (b"referrer-policy", b"no-referrer")]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def find_runs(root: Path, depth: int = 3) -> list[tuple[str, str, bool]]:
    """``(relative path, kind, has report.html)`` of every run directory (a ``run.json``) under
    ``root``, down to ``depth`` levels, sorted by path."""
    found = []
    if not root.is_dir():
        return found
    for level in range(1, depth + 1):
        for meta in root.glob("/".join(["*"] * level) + "/run.json"):
            run = meta.parent
            try:
                kind = str(json.loads(meta.read_text(encoding="utf-8")).get("kind", "?"))
            except (OSError, ValueError, AttributeError):
                kind = "unreadable run.json"
            found.append((run.relative_to(root).as_posix(), kind,
                          (run / "report.html").is_file()))
    return sorted(found)


def inside(root: Path, relative: str) -> Path | None:
    """The file ``root / relative`` when it resolves to a regular file under ``root``."""
    if "\x00" in relative:
        return None
    try:
        target = (root / relative).resolve()
    except (OSError, RuntimeError):
        return None
    if not target.is_relative_to(root) or not target.is_file():
        return None
    return target


def sse(event: dict[str, Any]) -> bytes:
    """One Server-Sent Event carrying ``event`` as JSON (JSON escapes every newline)."""
    return f"data: {json.dumps(event)}\n\n".encode()


async def stream(playground: Playground, job: Any, queue: ModelQueue) -> AsyncIterator[bytes]:
    """Queue, then run ``job`` in a worker thread, forwarding its events as they come."""
    loop = asyncio.get_running_loop()
    events: asyncio.Queue = asyncio.Queue()
    cancelled = threading.Event()
    if queue.lock.locked():
        yield sse({"type": "status", "state": "queued", "ahead": queue.waiting + 1})
    queue.waiting += 1
    try:
        await queue.lock.acquire()
    finally:
        queue.waiting -= 1
    worker = None
    try:
        queue.running += 1
        queue.peak = max(queue.peak, queue.running)
        yield sse({"type": "status", "state": "running"})

        def emit(event: dict[str, Any]) -> None:
            loop.call_soon_threadsafe(events.put_nowait, event)

        worker = loop.run_in_executor(None, playground.run, job, emit, cancelled)
        while True:
            getter = asyncio.ensure_future(events.get())
            done, _ = await asyncio.wait({getter, worker}, return_when=asyncio.FIRST_COMPLETED)
            if getter in done:
                yield sse(getter.result())
                continue
            getter.cancel()
            break
        while not events.empty():
            yield sse(events.get_nowait())
        exc = worker.exception()
        if exc is None:
            yield sse({"type": "done", **worker.result()})
        elif not isinstance(exc, Cancelled):
            yield sse({"type": "error", "error": " ".join(str(exc).split()) or repr(exc)})
    finally:
        cancelled.set()  # a closed connection stops the decode loop at its next token
        if worker is not None and not worker.done():
            # Hold the turn until the thread has stopped: never two generations at once.
            await asyncio.shield(asyncio.wait({worker}))
        queue.running -= 1
        queue.lock.release()
