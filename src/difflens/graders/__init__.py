"""Graders: small typed judgements (coherence, Patchscope scale, token relevance, hypothesis
score) behind one interface, answered by an LLM or offline.

>>> from difflens.graders import make_grader
>>> from difflens.llm import LLMConfig
>>> grader = make_grader(LLMConfig.from_env())   # offline when DIFFLENS_LLM_* are unset
>>> grader.token_relevance(["cake", "tax"], "Finetuned on cake baking.")  # doctest: +SKIP
[True, False]

Importing this package loads neither openai, torch nor sentence-transformers.
"""

from __future__ import annotations

from difflens.graders.agreement import agreement, load_recorded_cases, measure_agreement
from difflens.graders.base import Grader, ScaleChoice
from difflens.graders.coherence import CoherenceRule, CoherenceVerdict
from difflens.graders.factory import make_grader
from difflens.graders.llm_grader import LLMGrader
from difflens.graders.offline import OfflineGrader
from difflens.graders.prompts import DEFAULT_RUBRIC

__all__ = [
    "DEFAULT_RUBRIC",
    "CoherenceRule",
    "CoherenceVerdict",
    "Grader",
    "LLMGrader",
    "OfflineGrader",
    "ScaleChoice",
    "agreement",
    "load_recorded_cases",
    "make_grader",
    "measure_agreement",
]
