"""The grader endpoint of a run, from its flags (``--llm-base-url``, ``--llm-model``,
``--llm-api-key-env``) or the equal fields of a method's config: the one place that turns them
into an :class:`LLMConfig`, so every command applies the same default model.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from difflens.llm.config import LLMConfig

#: Grader model when ``--llm-model`` is not given (the seeds' grader).
DEFAULT_GRADER_MODEL = "gpt-5-mini"
#: Names of the flag / config fields read by :func:`llm_config_from_fields`.
LLM_FIELDS = ("llm_base_url", "llm_model", "llm_api_key_env")


def llm_config_from_fields(fields: Mapping[str, Any]) -> LLMConfig | None:
    """:class:`LLMConfig` of ``fields`` (any mapping holding :data:`LLM_FIELDS`, e.g. a method
    config's ``to_dict()`` or the CLI's grader flags); None without a base URL, meaning the
    offline graders.  Defaults: model :data:`DEFAULT_GRADER_MODEL`, key in ``OPENAI_API_KEY``.
    """
    if not fields.get("llm_base_url"):
        return None
    return LLMConfig(base_url=fields["llm_base_url"],
                     model=fields.get("llm_model") or DEFAULT_GRADER_MODEL,
                     api_key_env=fields.get("llm_api_key_env") or "OPENAI_API_KEY")
