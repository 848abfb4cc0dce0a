"""The interpretability agent: reads diffing results, queries the models under a budget and
describes what the finetune taught.

>>> from difflens.agent import AgentConfig, adl_results, run_agent      # doctest: +SKIP
>>> run = run_agent(LLMClient(cfg), adl_results("runs/adl"), access, AgentConfig(budget=5))
>>> run.description, run.hypotheses, run.accounting                      # doctest: +SKIP

On any pair, method runs included (``difflens agent``; :mod:`difflens.agent.session`):

>>> answer = difflens.agent("base-dir", "ft-dir", llm_base_url=URL, llm_model="gpt-5",
...                         methods="adl,mining")                       # doctest: +SKIP
>>> answer["description"], answer["hypotheses"], answer["files"]        # doctest: +SKIP

This package is itself callable (``difflens.agent(...)`` is
:func:`~difflens.agent.session.run_pair_agent`): ``difflens.agent`` names the package as soon as
any of its modules is imported, so a plain function of that name in ``difflens/__init__.py``
would be shadowed.  Importing this package loads neither torch nor openai.
"""

from __future__ import annotations

import sys
import types
from typing import Any

from difflens.agent.access import ModelAccess, PairAccess
from difflens.agent.anonymize import Anonymizer
from difflens.agent.loop import AgentConfig, AgentRun, run_agent
from difflens.agent.protocol import parse_action
from difflens.agent.results import Results, adl_results, blackbox_results, mining_results
from difflens.agent.tools import ToolBox, tool_specs

__all__ = [
    "AgentConfig",
    "AgentRun",
    "Anonymizer",
    "ModelAccess",
    "PairAccess",
    "Results",
    "ToolBox",
    "adl_results",
    "blackbox_results",
    "mining_results",
    "parse_action",
    "run_agent",
    "tool_specs",
]


class _CallablePackage(types.ModuleType):
    """Makes ``difflens.agent(...)`` run the agent on a pair (see the module docstring)."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        from difflens.agent.session import run_pair_agent

        return run_pair_agent(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
