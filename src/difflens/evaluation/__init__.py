"""Agent evaluation: organisms × agents × budgets × repeats, graded and summarised with CIs.

Importing this package loads neither torch nor openai (see :mod:`difflens.evaluation.harness`).
"""

from __future__ import annotations

from difflens.evaluation.stats import bootstrap_ci, format_table, summarize

__all__ = ["bootstrap_ci", "format_table", "summarize"]
