"""The interpretability agent: reads diffing results, queries the models under a budget and
describes what the finetune taught.

>>> from difflens.agent import AgentConfig, adl_results, run_agent      # doctest: +SKIP
>>> run = run_agent(LLMClient(cfg), adl_results("runs/adl"), access, AgentConfig(budget=5))
>>> run.description, run.hypotheses, run.accounting                      # doctest: +SKIP

Importing this package loads neither torch nor openai.
"""

from __future__ import annotations

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
