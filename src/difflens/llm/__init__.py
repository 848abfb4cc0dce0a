"""Client for any OpenAI-compatible chat-completions endpoint (OpenAI, OpenRouter, vLLM, Ollama,
llama.cpp server), with retries, budgets, bounded concurrency, parse-and-re-ask and accounting.

Importing this package does not import ``openai``: it is loaded on the first request.

>>> from difflens.llm import LLMClient, LLMConfig
>>> client = LLMClient(LLMConfig(base_url="http://localhost:11434/v1", model="qwen2.5:7b"))
>>> client.check_reachable()                                     # doctest: +SKIP
>>> client.chat([{"role": "user", "content": "Say hi"}]).text   # doctest: +SKIP
"""

from __future__ import annotations

from difflens.llm.accounting import Accounting, Usage
from difflens.llm.client import LLMClient
from difflens.llm.config import LLMConfig
from difflens.llm.errors import BudgetExceeded, LLMCallError, LLMError, LLMParseError
from difflens.llm.flags import llm_config_from_fields
from difflens.llm.types import ChatResult, Message, ToolCall

__all__ = [
    "Accounting",
    "BudgetExceeded",
    "ChatResult",
    "LLMCallError",
    "LLMClient",
    "LLMConfig",
    "LLMError",
    "LLMParseError",
    "Message",
    "ToolCall",
    "Usage",
    "llm_config_from_fields",
]
