"""Amplification artifacts: one definition per file, shared by the writer and every reader.

Run directory layout::

    run.json, stages.json      RunDir bookkeeping (config, finished stages)
    samples-a<α>.json          the samples of one strength (stage ``generate-a<α>``)
    grades.json                rate and coherence per α (stage ``grade``)
    search.json                the largest-coherent-α bisection (stage ``search``)
    summary.json               AmplifyResult
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from difflens.io.artifacts import (
    known_fields,
    read_json,
    read_run_summary,
    write_json,
)

GRADES_FILE = "grades.json"
SEARCH_FILE = "search.json"
SUMMARY_FILE = "summary.json"


def samples_file(alpha: float) -> str:
    """File of one strength's samples (``samples-a2.json``, ``samples-a-0.5.json``)."""
    return f"samples-a{float(alpha):g}.json"


def generate_stage(alpha: float) -> str:
    return f"generate-a{float(alpha):g}"


@dataclass
class AmplifyResult:
    """What an amplification run measured (``summary.json``); samples live beside it.

    ``per_alpha``: one row per α, in the order given: ``alpha``, ``rate`` and ``coherence``
    (``{mean, ci_low, ci_high, n}``: share of samples showing the finetune's domain / coherent),
    ``score`` (offline: mean similarity to the finetune documents, with interval),
    ``tokens``, ``seconds``.  ``baseline_rate``: the rate at α = 0 when α = 0 was sampled.
    ``largest_coherent_alpha``: the bisection's answer (None: not searched or none found).
    """

    run_dir: str
    base: str
    finetuned: str
    alphas: list[float]
    per_alpha: list[dict[str, Any]]
    rate_rule: dict[str, Any]
    coherence_grader: dict[str, Any]
    baseline_rate: float | None = None
    largest_coherent_alpha: float | None = None
    search: dict[str, Any] | None = None
    vocab: int = 0
    notes: list[str] = field(default_factory=list)
    description: str | None = None
    generated_tokens: int = 0
    seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, run: Path | None = None) -> None:
        write_json(Path(run or self.run_dir) / SUMMARY_FILE, self.to_dict())

    @classmethod
    def load(cls, run: Path | str) -> AmplifyResult:
        """Read ``summary.json`` of the run in ``run`` (one line naming the directory and
        saying to re-run when it is missing, corrupt or has no ``per_alpha`` rows)."""
        run = Path(run)
        data = read_run_summary(run, "amplification", "amplify", {"per_alpha": list},
                                SUMMARY_FILE)
        return cls(**known_fields(cls, {**data, "run_dir": str(run)}, _MISSING))

    def rate(self, alpha: float) -> dict[str, Any]:
        """The row of ``alpha`` in :attr:`per_alpha` (KeyError when it was not sampled)."""
        for row in self.per_alpha:
            if float(row["alpha"]) == float(alpha):
                return row
        raise KeyError(alpha)

    def samples(self, alpha: float) -> list[str]:
        """The samples drawn at ``alpha``."""
        return list(read_json(Path(self.run_dir) / samples_file(alpha))["texts"])


#: What a field absent from ``summary.json`` reads as (``per_alpha`` is required).
_MISSING: dict[str, Any] = {
    "base": "", "finetuned": "", "alphas": [], "rate_rule": {}, "coherence_grader": {},
}
