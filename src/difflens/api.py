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
    from difflens.methods.amplify.config import AmplifyConfig
    from difflens.methods.kl.config import KLConfig
    from difflens.methods.pca.config import PCAConfig
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


def run_amplify(config: AmplifyConfig, out: Path | None = None, pair: ModelPair | None = None,
                progress: bool = True, grader: Any = None, rate: Any = None) -> dict[str, Any]:
    """Run (or resume) amplification, then write its ``report.html``; returns the summary with
    ``summary["report"]`` (also in ``summary.json``)."""
    from difflens.methods.amplify.runner import run_amplify as run_stages
    from difflens.report.page import render_report

    summary = run_stages(config, out, pair=pair, progress=progress, grader=grader, rate=rate)
    summary["report"] = str(render_report(Path(summary["run_dir"])))
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


def run_mining(config: Any, out: Path | None = None, pair: ModelPair | None = None,
               progress: bool = True, grader: Any = None, description: str | None = None,
               report: bool = True) -> dict[str, Any]:
    """Run (or resume) Diff Mining (``config``: a ``MiningConfig``), then write its
    ``report.html`` unless ``report`` is False; returns the runner's summary, with
    ``summary["report"]`` the report's path when one was written."""
    from difflens.methods.mining.runner import run_mining as run_stages
    from difflens.report.page import render_report

    summary = run_stages(config, out, pair=pair, progress=progress, grader=grader,
                         description=description)
    if report:
        summary["report"] = str(render_report(summary["run_dir"]))
    return summary


def run_pca(config: PCAConfig, out: Path | None = None, pair: ModelPair | None = None,
            progress: bool = True) -> dict[str, Any]:
    """Run (or resume) PCA of activation differences, then write its ``report.html`` unless
    ``"report"`` is skipped (``summary["report"]`` is then its path, also in ``summary.json``)."""
    from difflens.methods.pca.result import PCAResult
    from difflens.methods.pca.runner import run_pca as run_stages
    from difflens.report.page import render_report

    summary = run_stages(config, out, pair=pair, progress=progress)
    if REPORT not in config.skip:
        summary["report"] = str(render_report(Path(summary["run_dir"])))
        PCAResult.from_dict(summary).save()
    return summary


def run_kl(config: KLConfig, out: Path | None = None, pair: ModelPair | None = None,
           progress: bool = True) -> dict[str, Any]:
    """Run (or resume) the per-token KL, then write its ``report.html``; returns the summary
    with ``summary["report"]`` its path (also in ``summary.json``)."""
    from difflens.methods.kl.result import KLResult
    from difflens.methods.kl.runner import run_kl as run_stages
    from difflens.report.page import render_report

    summary = run_stages(config, out, pair=pair, progress=progress)
    summary["report"] = str(render_report(Path(summary["run_dir"])))
    result = KLResult.load(summary["run_dir"])
    result.report = summary["report"]
    result.save()
    return summary


def run_weights(config: Any, out: Path | None = None, progress: bool = True,
                trust_remote_code: bool = False, report: bool = True,
                pair: Any = None) -> dict[str, Any]:
    """Run (or resume) the weight-space lens (``config``: a ``WeightsConfig``), then write its
    ``report.html`` unless ``report`` is False; ``summary["report"]`` is its path (also in
    ``summary.json``).  ``pair`` is accepted and unused: the lens reads the checkpoints' files,
    not a loaded pair (so every method runs through one signature)."""
    from difflens.methods.weights.result import WeightsResult
    from difflens.methods.weights.runner import run_weights as run_stages
    from difflens.report.page import render_report

    summary = run_stages(config, out, progress=progress, trust_remote_code=trust_remote_code)
    if report:
        summary["report"] = str(render_report(Path(summary["run_dir"])))
        WeightsResult.from_dict(summary).save()
    return summary
