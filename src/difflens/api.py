"""Whole runs as a user starts them: a method's runner, then the HTML report of its directory.

Runners (``difflens.methods.*.runner``) compute and return their summary; the report renders
what they left in the run directory.  Joining the two is this layer's job, shared by the CLI
(``difflens adl``), the Python API (:func:`difflens.adl`) and the zoo evaluation, so a method
never imports the report.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from difflens.methods.adl.config import ADLConfig
    from difflens.models.pair import ModelPair

#: The stage name that ``--skip`` uses for the report.
REPORT = "report"


def run_adl(config: ADLConfig, out: Path | None = None, pair: ModelPair | None = None,
            progress: bool = True) -> dict[str, Any]:
    """Run (or resume) ADL, then write its ``report.html`` unless ``"report"`` is skipped.

    Returns the runner's summary; with the report, ``summary["report"]`` is its path (also in
    ``summary.json``).
    """
    from difflens.methods.adl.runner import run_adl as run_stages

    summary = run_stages(config, out, pair=pair, progress=progress)
    if REPORT not in config.skip:
        add_report(summary)
    return summary


def add_report(summary: dict[str, Any]) -> Path:
    """Render the report of the ADL run in ``summary["run_dir"]`` and record its path in the
    summary and in ``summary.json``."""
    from difflens.methods.adl.result import ADLSummary
    from difflens.report.page import render_report

    run = Path(summary["run_dir"])
    path = render_report(run)
    summary["report"] = str(path)
    ADLSummary.from_dict(summary).save(run)
    return path
