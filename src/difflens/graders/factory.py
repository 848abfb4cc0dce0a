"""Pick the grader backend: the LLM when an endpoint is configured, offline otherwise."""

from __future__ import annotations

from collections.abc import Sequence

from difflens.graders.base import Grader
from difflens.graders.coherence import Perplexity
from difflens.llm import LLMConfig


def make_grader(
    llm_config: LLMConfig | None,
    perplexity: Perplexity | None = None,
    *,
    reference_samples: Sequence[str] | None = None,
    check_reachable: bool = False,
) -> Grader:
    """An :class:`LLMGrader` for ``llm_config``, or an :class:`OfflineGrader` when it is ``None``.

    ``perplexity`` (texts -> perplexities, normally the base model's) and ``reference_samples``
    (unsteered samples) are used by the offline backend only.  With ``check_reachable`` the LLM
    endpoint is probed now, so a wrong URL fails in a second instead of mid-run.  There is no
    silent fallback from LLM to offline: results graded by different backends are not comparable,
    so the choice is the caller's.
    """
    if llm_config is None:
        from difflens.graders.offline import OfflineGrader

        return OfflineGrader(perplexity, reference_samples=reference_samples)
    from difflens.graders.llm_grader import LLMGrader

    grader = LLMGrader(llm_config)
    if check_reachable:
        grader.client.check_reachable()
    return grader
