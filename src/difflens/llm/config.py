"""Configuration of an OpenAI-compatible chat-completions endpoint.

The config names the environment variable that holds the API key, never the key itself: the key
is read from the environment at call time (see :func:`read_api_key`), so a config can be printed,
logged, saved next to results and shared without leaking a secret.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from difflens.errors import DifflensError

#: Environment variables read by :meth:`LLMConfig.from_env`.
ENV_BASE_URL = "DIFFLENS_LLM_BASE_URL"
ENV_MODEL = "DIFFLENS_LLM_MODEL"
ENV_API_KEY_ENV = "DIFFLENS_LLM_API_KEY_ENV"

DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_MODEL = "gpt-4o-mini"

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class LLMConfig:
    """Where and how to call an OpenAI-compatible chat-completions endpoint.

    Works with OpenAI, OpenRouter, vLLM, Ollama (``http://localhost:11434/v1``) and the llama.cpp
    server (``http://localhost:8080/v1``): anything serving ``POST {base_url}/chat/completions``.
    """

    base_url: str = DEFAULT_BASE_URL
    """Endpoint root including the ``/v1`` suffix, e.g. ``http://localhost:8000/v1``."""
    model: str = DEFAULT_MODEL
    """Model name as the endpoint knows it."""
    api_key_env: str = "OPENAI_API_KEY"
    """NAME of the environment variable holding the key (read at call time; may be unset for
    local servers that need no key)."""
    timeout: float = 60.0
    """Seconds before one HTTP request is abandoned (and retried)."""
    max_retries: int = 4
    """Retries per request on 429, 5xx, timeouts and connection errors (so 1 + max_retries
    attempts)."""
    backoff_base: float = 0.5
    """First retry delay in seconds; doubles each retry."""
    backoff_max: float = 30.0
    """Upper bound of one retry delay in seconds (also caps a server's Retry-After)."""
    jitter: float = 0.25
    """Random extra delay as a fraction of the delay, so parallel workers do not retry in step."""
    concurrency: int = 4
    """Maximum simultaneous requests of one client (batch calls use a thread pool this size)."""
    max_calls: int | None = None
    """Budget: most requests one client may send in its lifetime (retries and re-asks count)."""
    max_tokens: int | None = None
    """Budget: most total tokens (prompt + completion, as reported by the endpoint)."""
    max_completion_tokens: int = 1024
    """Per-request cap on generated tokens (sent as ``max_tokens``; also reserved against the
    token budget before the request is sent)."""
    max_parse_retries: int = 2
    """How many times a malformed answer is re-asked before giving up."""

    def __post_init__(self) -> None:
        # Validate with user-facing errors (not asserts): these values come from flags/env.
        if not self.base_url.startswith(("http://", "https://")):
            raise DifflensError(
                f"LLM base URL {display_url(self.base_url)!r} must start with http:// or https://; "
                "check --llm-base-url"
            )
        if not self.model:
            raise DifflensError("LLM model name is empty; set --llm-model or DIFFLENS_LLM_MODEL")
        if not _ENV_NAME.match(self.api_key_env) or _looks_like_key(self.api_key_env):
            # Never echo the value: a user may have pasted the key itself here.
            raise DifflensError(
                "api_key_env must be the NAME of an environment variable holding the key "
                "(e.g. OPENAI_API_KEY), not the key itself"
            )
        _positive(self.timeout, "timeout")
        _positive(self.concurrency, "concurrency")
        _positive(self.max_completion_tokens, "max_completion_tokens")
        for name in ("max_retries", "max_parse_retries", "backoff_base", "backoff_max", "jitter"):
            if getattr(self, name) < 0:
                raise DifflensError(f"LLM setting {name} must be >= 0, got {getattr(self, name)}")
        for name in ("max_calls", "max_tokens"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise DifflensError(f"LLM budget {name} must be >= 0 or unset, got {value}")

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, **overrides: Any
    ) -> LLMConfig | None:
        """Config from ``DIFFLENS_LLM_BASE_URL`` / ``DIFFLENS_LLM_MODEL`` /
        ``DIFFLENS_LLM_API_KEY_ENV``; ``None`` when neither base URL nor model is set.

        Returning ``None`` lets callers write ``make_grader(LLMConfig.from_env())`` and fall back
        to offline grading on machines where no endpoint is configured.  ``overrides`` (e.g.
        ``max_calls=200``) are applied on top.
        """
        env = os.environ if environ is None else environ
        base_url = env.get(ENV_BASE_URL, "").strip()
        model = env.get(ENV_MODEL, "").strip()
        if not base_url and not model:
            return None
        fields: dict[str, Any] = {}
        if base_url:
            fields["base_url"] = base_url
        if model:
            fields["model"] = model
        key_env = env.get(ENV_API_KEY_ENV, "").strip()
        if key_env:
            fields["api_key_env"] = key_env
        fields.update(overrides)
        return cls(**fields)

    def replace(self, **changes: Any) -> LLMConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict of the settings (the key's variable name, never the key)."""
        out = dataclasses.asdict(self)
        out["base_url"] = display_url(self.base_url)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LLMConfig:
        """Inverse of :meth:`to_dict` (unknown keys are rejected)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise DifflensError(
                f"unknown LLM config fields {unknown}; expected some of {sorted(known)}"
            )
        return cls(**dict(data))

    def __repr__(self) -> str:
        # Custom repr so a URL with embedded credentials (https://user:pw@host) is never printed.
        body = ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items())
        return f"LLMConfig({body})"


def read_api_key(config: LLMConfig) -> str | None:
    """The API key from the environment now, or ``None`` when the variable is unset/empty."""
    value = os.environ.get(config.api_key_env, "").strip()
    return value or None


def display_url(url: str) -> str:
    """``url`` without any ``user:password@`` part, safe to print."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<invalid url>"
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


def _looks_like_key(name: str) -> bool:
    """A pasted secret rather than a variable name: ``sk-...`` keys fail the name pattern
    already; ``sk_live_...``-style keys are long and carry digits.  Names such as
    ``SKY_API_KEY`` or ``sk_key`` are fine."""
    return name.lower().startswith("sk_") and len(name) >= 20 and any(c.isdigit() for c in name)


def _positive(value: float, name: str) -> None:
    if value <= 0:
        raise DifflensError(f"LLM setting {name} must be > 0, got {value}")
