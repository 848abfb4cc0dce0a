"""A small, robust client for OpenAI-compatible chat-completions endpoints.

What it adds over calling ``openai`` directly: our own retries (so they are counted and their
backoff is configurable), parse-and-re-ask, per-run budgets, bounded concurrency, accounting, and
one-line errors that never contain the API key.  The key is read from the environment variable the
config names at every request and sent as a per-request header; it is stored nowhere.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import replace
from typing import Any, TypeVar

from difflens.errors import DifflensError
from difflens.llm.accounting import Accounting, estimate_prompt_tokens
from difflens.llm.config import LLMConfig, display_url, read_api_key
from difflens.llm.errors import LLMCallError, LLMParseError, redact, shorten
from difflens.llm.retry import Failure, backoff_delay, classify
from difflens.llm.types import ChatResult, Message, ToolCall

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

# The openai package insists on *some* key at construction; the real one travels per request.
_PLACEHOLDER_KEY = "difflens-no-key"

REASK_TEMPLATE = (
    "Your previous answer could not be parsed: {error}. "
    "Answer again, following the required answer format exactly."
)


class LLMClient:
    """Chat with one endpoint/model under the retry, concurrency and budget rules of a config."""

    def __init__(
        self,
        config: LLMConfig,
        *,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.accounting = Accounting(config.max_calls, config.max_tokens)
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._slots = threading.BoundedSemaphore(config.concurrency)
        self._client_lock = threading.Lock()
        self._openai: Any = None
        # Newer OpenAI models reject `max_tokens`; we switch to `max_completion_tokens` on demand.
        self._cap_param = "max_tokens"

    def __repr__(self) -> str:
        return f"LLMClient(model={self.config.model!r}, base_url={self.endpoint!r})"

    @property
    def endpoint(self) -> str:
        """The base URL, safe to print."""
        return display_url(self.config.base_url)

    # -- public API -----------------------------------------------------------------------------
    def chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        parse: Callable[[str], T] | None = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
        tool_choice: str | Mapping[str, Any] | None = None,
        max_completion_tokens: int | None = None,
        temperature: float | None = None,
        extra_body: Mapping[str, Any] | None = None,
    ) -> ChatResult:
        """Send one conversation and return the answer.

        ``parse`` receives the answer text and must raise ``ValueError`` when it is malformed;
        the model is then told what was wrong and asked again, up to ``max_parse_retries`` times,
        after which :class:`LLMParseError` is raised.  Its return value is ``result.parsed``.
        ``tools`` are OpenAI function-tool specs; calls come back in ``result.tool_calls``.
        ``temperature`` is omitted unless given (some models accept only their default).
        """
        history: list[Message] = [dict(m) for m in messages]
        attempts = 0
        last_error = ""
        cap = max_completion_tokens or self.config.max_completion_tokens
        truncated = False
        for ask in range(self.config.max_parse_retries + 1):
            result = self._request_with_retries(
                history,
                tools=tools,
                tool_choice=tool_choice,
                cap=cap,
                temperature=temperature,
                extra_body=extra_body,
                reask=ask > 0,
            )
            attempts += result.attempts
            if parse is None:
                return replace(result, attempts=attempts)
            try:
                value = parse(result.text)
            except ValueError as exc:
                last_error = shorten(str(exc) or type(exc).__name__, 160)
                truncated = result.finish_reason == "length"
                log.info("LLM answer unparsable (%s); re-asking", last_error)
                history += [
                    {"role": "assistant", "content": result.text},
                    {"role": "user", "content": REASK_TEMPLATE.format(error=last_error)},
                ]
                continue
            return replace(result, parsed=value, attempts=attempts)
        # Reasoning models spend the cap on hidden tokens and return "" cut at the limit.
        hint = (
            f"the answer was cut at max_completion_tokens={cap}: raise it"
            if truncated
            else "try a stronger model (--llm-model)"
        )
        raise LLMParseError(
            f"LLM answer from {self.config.model} could not be parsed after "
            f"{self.config.max_parse_retries + 1} attempts ({last_error}); last answer: "
            f"{shorten(history[-2]['content'] or '', 120)!r}; {hint}"
        )

    def chat_many(
        self, conversations: Sequence[Sequence[Mapping[str, Any]]], **kwargs: Any
    ) -> list[ChatResult]:
        """:meth:`chat` over many conversations, at most ``concurrency`` at a time, in order."""
        return self.map(lambda conv: self.chat(conv, **kwargs), conversations)

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
        """``[fn(x) for x in items]`` on a thread pool of ``concurrency`` workers.

        On the first error, work not yet started is cancelled and that error is raised (so a
        budget refusal or a dead endpoint stops the batch instead of failing N more times).
        """
        items = list(items)
        if len(items) <= 1 or self.config.concurrency == 1:
            return [fn(x) for x in items]
        with ThreadPoolExecutor(max_workers=min(self.config.concurrency, len(items))) as pool:
            futures = [pool.submit(fn, x) for x in items]
            done, pending = wait(futures, return_when=FIRST_EXCEPTION)
            failed = [f for f in futures if f in done and f.exception() is not None]
            if failed:
                for f in pending:
                    f.cancel()
                raise failed[0].exception()  # type: ignore[misc]
            return [f.result() for f in futures]

    def check_reachable(self) -> None:
        """Fail fast with a one-line :class:`DifflensError` if the endpoint cannot be reached.

        Sends ``GET {base_url}/models`` once, without retries, with a short timeout.  Any HTTP
        answer except 401/403 counts as reachable (llama.cpp and some proxies lack ``/models``).
        Does not count against the budget.
        """
        import openai

        key = read_api_key(self.config)
        problem = None
        try:
            self._client().models.list(
                timeout=min(self.config.timeout, 5.0), extra_headers=_auth_header(key)
            )
        except openai.APIStatusError as exc:
            if exc.status_code in (401, 403):
                problem = self._auth_message(exc.status_code)
        except openai.APIConnectionError as exc:
            failure = classify(exc)
            reason = failure.reason if failure else str(exc)
            problem = self._unreachable_message(redact(reason, key))
        if problem is not None:
            # Raised outside the except block: the openai exception (which may quote the key)
            # must not ride along as __context__.
            raise DifflensError(problem)

    def usage(self) -> dict[str, Any]:
        """JSON-safe accounting to store with results: endpoint, model, calls, tokens, budgets."""
        return {"endpoint": self.endpoint, "model": self.config.model, **self.accounting.to_dict()}

    # -- internals ------------------------------------------------------------------------------
    def _client(self) -> Any:
        with self._client_lock:
            if self._openai is None:
                try:
                    import openai
                except ImportError:
                    raise DifflensError(
                        "LLM grading needs the openai package: pip install 'difflens[llm]', "
                        "or use offline grading"
                    ) from None
                self._openai = openai.OpenAI(
                    base_url=self.config.base_url,
                    api_key=_PLACEHOLDER_KEY,
                    timeout=self.config.timeout,
                    max_retries=0,  # we retry ourselves, to count and bound it
                )
            return self._openai

    def _request_with_retries(
        self, history: list[Message], *, reask: bool, **kw: Any
    ) -> ChatResult:
        failure: Failure | None = None
        attempts = 0
        for retry_index in range(self.config.max_retries + 1):
            if failure is not None:
                delay = backoff_delay(
                    retry_index - 1,
                    self.config.backoff_base,
                    self.config.backoff_max,
                    self.config.jitter,
                    failure.retry_after,
                    self._rng,
                )
                log.warning(
                    "LLM request failed (%s); retry %d/%d in %.2f s",
                    failure.kind if failure.status is None else f"HTTP {failure.status}",
                    retry_index,
                    self.config.max_retries,
                    delay,
                )
                self._sleep(delay)
            attempts += 1
            outcome = self._attempt(
                history, retry=failure is not None, reask=reask and failure is None, **kw
            )
            if isinstance(outcome, ChatResult):
                return replace(outcome, attempts=attempts)
            failure = outcome
            if not failure.retryable:
                break
        assert failure is not None  # the loop ran at least once and did not return
        raise LLMCallError(self._failure_message(failure, attempts)) from None

    def _attempt(
        self,
        history: list[Message],
        *,
        tools: Any,
        tool_choice: Any,
        cap: int,
        temperature: float | None,
        extra_body: Any,
        retry: bool,
        reask: bool,
    ) -> ChatResult | Failure:
        """One HTTP request within budget and concurrency limits: a result or a Failure."""
        reserved = estimate_prompt_tokens(history, tools) + cap
        self.accounting.reserve(reserved)  # raises BudgetExceeded: nothing is sent
        params: dict[str, Any] = {"model": self.config.model, "messages": history}
        params[self._cap_param] = cap
        if tools:
            params["tools"] = list(tools)
        if tool_choice is not None:
            params["tool_choice"] = tool_choice
        if temperature is not None:
            params["temperature"] = temperature
        if extra_body:
            params["extra_body"] = dict(extra_body)
        key = read_api_key(self.config)  # read at call time, never stored
        try:
            with self._slots:
                completion = self._client().chat.completions.create(
                    **params, extra_headers=_auth_header(key)
                )
            result = _to_result(completion, history)
        except Exception as exc:
            failure = classify(exc)
            self.accounting.settle(reserved, failed=True, retry=retry, reask=reask)
            if failure is None:
                raise
            if failure.status == 400 and "max_completion_tokens" in failure.reason:
                self._cap_param = "max_completion_tokens"
                return replace(failure, retryable=True)
            return replace(failure, reason=redact(failure.reason, key))
        self.accounting.settle(
            reserved,
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens,
            retry=retry,
            reask=reask,
        )
        return result

    def _failure_message(self, failure: Failure, attempts: int) -> str:
        if failure.kind == "connection":
            return self._unreachable_message(failure.reason)
        if failure.kind == "timeout":
            return (
                f"LLM endpoint {self.endpoint} did not answer within {self.config.timeout:g} s "
                f"({attempts} attempts); raise --llm-timeout, check the endpoint, or use offline "
                "grading"
            )
        if failure.status in (401, 403):
            return self._auth_message(failure.status)
        if failure.status == 404:
            return (
                f"LLM endpoint {self.endpoint} answered HTTP 404 ({failure.reason}); check "
                f"--llm-base-url (it should end in /v1) and --llm-model ({self.config.model!r})"
            )
        if failure.status is not None and not failure.retryable:
            return (
                f"LLM endpoint {self.endpoint} refused the request with HTTP {failure.status}: "
                f"{failure.reason}; check --llm-model and what this endpoint supports"
            )
        what = f"HTTP {failure.status}" if failure.status else "a malformed response"
        return (
            f"LLM endpoint {self.endpoint} failed with {what} after {attempts} attempt"
            f"{'s' if attempts != 1 else ''}: {failure.reason}; retry later or use offline grading"
        )

    def _unreachable_message(self, reason: str) -> str:
        return (
            f"cannot reach LLM endpoint {self.endpoint}: {reason}; check --llm-base-url or use "
            "offline grading"
        )

    def _auth_message(self, status: int | None) -> str:
        where = "is not set" if read_api_key(self.config) is None else "was rejected"
        return (
            f"LLM endpoint {self.endpoint} answered HTTP {status}: the API key in "
            f"${self.config.api_key_env} {where}; export a valid key or set --llm-api-key-env"
        )


def _auth_header(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


def _to_result(completion: Any, history: Sequence[Mapping[str, Any]]) -> ChatResult:
    """Convert an ``openai`` completion object; ValueError if it has no usable choice."""
    choices = getattr(completion, "choices", None)
    if not choices:
        raise ValueError(f"response has no choices: {shorten(repr(completion), 120)}")
    message = choices[0].message
    text = message.content or ""
    calls = tuple(
        ToolCall(id=c.id or "", name=c.function.name, arguments=c.function.arguments or "")
        for c in (message.tool_calls or [])
        if getattr(c, "function", None) is not None
    )
    usage = getattr(completion, "usage", None)
    if usage is not None and usage.prompt_tokens is not None:
        prompt_tokens, completion_tokens = usage.prompt_tokens, usage.completion_tokens or 0
    else:  # some local servers omit usage: book an estimate so the token budget still bites
        prompt_tokens = estimate_prompt_tokens(history)
        completion_tokens = len(text) // 4 + 1
    return ChatResult(
        text=text,
        tool_calls=calls,
        finish_reason=choices[0].finish_reason,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        model=getattr(completion, "model", None),
    )
