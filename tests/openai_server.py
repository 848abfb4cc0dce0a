"""A real HTTP server speaking the OpenAI chat-completions protocol, with scripted answers.

The only stand-in for external LLM APIs in the test suite.  It listens on 127.0.0.1 at a free
port (stdlib ``http.server`` in a thread) and answers ``POST /v1/chat/completions`` and
``GET /v1/models`` the way OpenAI-compatible servers do, so the real ``openai`` client and all our
retry/timeout/concurrency code run unmodified against it.

Answers come from :class:`Rule` s, tried in order against the LAST USER MESSAGE of a request (or
the last tool result, when one follows it, so agent loops can be scripted): the
first rule whose substring (or regex) matches and whose ``times`` is not used up decides — a text
answer, tool calls, an HTTP error status, a delay (to trigger client timeouts) or a raw malformed
body.  A prompt no rule matches gets HTTP 500 with an explanatory body AND is recorded in
``server.unknown``; the :func:`openai_server` fixture fails the test at teardown if any were seen,
so a test can never pass by accident on an unscripted prompt.

Usage counting is deterministic: prompt_tokens = number of whitespace-separated words in all
message contents, completion_tokens = words in the answer (at least 1), unless a rule sets
``usage``.

    from openai_server import Rule, openai_server_fixture  # noqa: F401 (registers the fixture)

    def test_x(openai_server):
        openai_server.add(Rule("capital of France", reply="Paris"))
        cfg = LLMConfig(base_url=openai_server.base_url, model="test-model")
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

Reply = str | Callable[[dict[str, Any]], str]


@dataclass
class Rule:
    """One scripted behaviour, chosen when ``match`` is found in the last user message."""

    match: str = ""
    """Substring to find (or a regex when ``regex``); "" matches every prompt."""
    reply: Reply | None = None
    """Answer text, or a function of the request JSON returning it."""
    tool_calls: list[dict[str, Any]] | None = None
    """Calls to return: ``[{"name": "f", "arguments": {...} or "raw json"}]``."""
    status: int | None = None
    """Answer with this HTTP error status instead (e.g. 429, 500, 401)."""
    body: str | None = None
    """Error body (default: an OpenAI-style error object) or, with ``status`` None and
    ``reply`` None, a raw 200 body (use for malformed JSON)."""
    headers: dict[str, str] = field(default_factory=dict)
    """Extra response headers (e.g. ``{"Retry-After": "0"}``)."""
    delay: float = 0.0
    """Seconds to wait before answering (longer than the client timeout = a timeout)."""
    times: int | None = None
    """How many requests this rule serves before it is skipped (None: unlimited)."""
    finish_reason: str | None = None
    """Override the reported finish reason (e.g. "length" for an answer cut at the cap)."""
    usage: tuple[int, int] | None = None
    """(prompt_tokens, completion_tokens) to report instead of word counts."""
    regex: bool = False
    used: int = 0

    def matches(self, prompt: str) -> bool:
        if self.times is not None and self.used >= self.times:
            return False
        if self.regex:
            return re.search(self.match, prompt, flags=re.S) is not None
        return self.match in prompt


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any] | None
    prompt: str
    """The last user message's text (or tool result's, when that came last)."""
    started: float


class ScriptedOpenAIServer:
    """The server; start/stop it yourself or use the :func:`openai_server` fixture."""

    def __init__(self, rules: list[Rule] | None = None, model: str = "test-model") -> None:
        self.rules: list[Rule] = list(rules or [])
        self.model = model
        self.requests: list[RecordedRequest] = []
        self.unknown: list[str] = []
        self.require_key: str | None = None
        """When set, requests without ``Authorization: Bearer <key>`` get 401, echoing the key
        they sent the way OpenAI does (to test that errors never repeat it)."""
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> ScriptedOpenAIServer:
        handler = type("Handler", (_Handler,), {"server_state": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._httpd.block_on_close = False
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # wakes handlers sleeping in a scripted delay
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()

    def __enter__(self) -> ScriptedOpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        assert self._httpd is not None, "server not started"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    # -- scripting and assertions ---------------------------------------------------------------
    def add(self, *rules: Rule) -> ScriptedOpenAIServer:
        with self._lock:
            self.rules.extend(rules)
        return self

    def chat_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path.endswith("/chat/completions")]

    def assert_all_known(self) -> None:
        if self.unknown:
            raise AssertionError(
                f"scripted OpenAI server got {len(self.unknown)} prompt(s) no rule matches; "
                f"first: {self.unknown[0][:300]!r}"
            )

    def _pick(self, prompt: str) -> Rule | None:
        with self._lock:
            for rule in self.rules:
                if rule.matches(prompt):
                    rule.used += 1
                    return rule
            self.unknown.append(prompt)
            return None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_state: ScriptedOpenAIServer

    def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
        pass

    def _authorised(self) -> bool:
        required = self.server_state.require_key
        sent = self.headers.get("Authorization", "")
        if required is None or sent == f"Bearer {required}":
            return True
        message = f"Incorrect API key provided: {sent.removeprefix('Bearer ')}"
        self._send(401, _error(message, "invalid_request_error"))
        return False

    def do_GET(self) -> None:
        state = self.server_state
        self._record(None, "")
        if not self._authorised():
            return
        if self.path.rstrip("/").endswith("/models"):
            data = [{"id": state.model, "object": "model", "created": 0, "owned_by": "tests"}]
            self._send(200, {"object": "list", "data": data})
        else:
            self._send(404, _error(f"no route GET {self.path}", "not_found"))

    def do_POST(self) -> None:
        state = self.server_state
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw or b"{}")
        except json.JSONDecodeError:
            self._send(400, _error("request body is not JSON", "invalid_request_error"))
            return
        prompt = _last_user_text(body.get("messages") or [])
        self._record(body, prompt)
        if not self._authorised():
            return
        if not self.path.rstrip("/").endswith("/chat/completions"):
            self._send(404, _error(f"no route POST {self.path}", "not_found"))
            return
        with state._lock:
            state.in_flight += 1
            state.max_in_flight = max(state.max_in_flight, state.in_flight)
        try:
            self._answer(body, prompt)
        finally:
            with state._lock:
                state.in_flight -= 1

    def _answer(self, body: dict[str, Any], prompt: str) -> None:
        state = self.server_state
        rule = state._pick(prompt)
        if rule is None:
            message = f"scripted server has no rule for prompt: {prompt[:200]!r}"
            self._send(500, _error(message, "server_error"))
            return
        if rule.delay and state._stopping.wait(rule.delay):
            return
        if rule.status is not None:
            payload = rule.body if rule.body is not None else _error("scripted error", "scripted")
            self._send(rule.status, payload, rule.headers)
            return
        if rule.reply is None and rule.tool_calls is None:
            self._send(200, rule.body or "", rule.headers)  # raw, possibly malformed body
            return
        text = rule.reply(body) if callable(rule.reply) else rule.reply
        self._send(200, _completion(body, state.model, text, rule), rule.headers)

    def _record(self, body: dict[str, Any] | None, prompt: str) -> None:
        headers = {k.lower(): v for k, v in self.headers.items()}
        entry = RecordedRequest(self.command, self.path, headers, body, prompt, time.monotonic())
        with self.server_state._lock:
            self.server_state.requests.append(entry)

    def _send(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = payload if isinstance(payload, str) else json.dumps(payload)
        raw = data.encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(raw)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout): nothing to do


def _completion(body: dict[str, Any], model: str, text: str | None, rule: Rule) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": text}
    finish = "stop"
    if rule.tool_calls:
        message["tool_calls"] = [
            {
                "id": f"call_{i}",
                "type": "function",
                "function": {
                    "name": call["name"],
                    "arguments": call["arguments"]
                    if isinstance(call.get("arguments"), str)
                    else json.dumps(call.get("arguments", {})),
                },
            }
            for i, call in enumerate(rule.tool_calls)
        ]
        finish = "tool_calls"
    finish = rule.finish_reason or finish
    if rule.usage is not None:
        prompt_tokens, completion_tokens = rule.usage
    else:
        prompt_tokens = sum(len(str(m.get("content") or "").split()) for m in body["messages"])
        completion_tokens = max(1, len((text or "").split()))
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 0,
        "model": body.get("model", model),
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def _error(message: str, kind: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "code": None}}


def _last_user_text(messages: list[dict[str, Any]]) -> str:
    """Text of the last user message, or of a tool result that came after it (agent loops)."""
    for message in reversed(messages):
        if message.get("role") in ("user", "tool"):
            content = message.get("content")
            if isinstance(content, list):  # content parts
                return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
            return str(content or "")
    return ""


def closed_port_url() -> str:
    """A base URL on 127.0.0.1 where nothing listens (connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


@pytest.fixture(name="openai_server")
def openai_server_fixture():
    """A started :class:`ScriptedOpenAIServer`; fails the test if an unscripted prompt arrived."""
    server = ScriptedOpenAIServer().start()
    try:
        yield server
    finally:
        server.stop()
    server.assert_all_known()
