"""The one reader and writer of a weight-space lens run directory.

Files (names defined here only)::

    run.json, stages.json      RunDir bookkeeping
    modules.json               every diffed module: norms, singular values, stable rank
    vectors.safetensors        per module, its top residual-side singular vectors (n, d)
    readouts.json              logit-lens readouts (both signs) of the top modules' vectors
    summary.json               WeightsResult
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

MODULES_FILE = "modules.json"
VECTORS_FILE = "vectors.safetensors"
READOUTS_FILE = "readouts.json"
SUMMARY_FILE = "summary.json"


@dataclass
class WeightsResult:
    """What a weight-space lens run found (``summary.json``).

    ``top_modules``: the highest-ranked module rows (see :class:`~.core.ModuleStats`, plus
    ``relative``); ``heatmap``: ``{"metric", "layers": [int], "kinds": [str], "values":
    [[float | None]]}`` (layers × kinds); ``readouts``: per read module ``{"module", "layer",
    "kind", "role", "score", "vectors": [{"index", "sigma", "+", "-", "best"}]}``.
    """

    run_dir: str
    base: str
    finetuned: str
    method: str  # "lora" or "full"
    rank_by: str
    hidden: int
    n_modules: int
    n_changed: int
    no_difference: bool
    max_norm: float
    top_modules: list[dict[str, Any]]
    heatmap: dict[str, Any]
    readouts: list[dict[str, Any]]
    notes: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    report: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WeightsResult:
        return cls(**known_fields(cls, data, _MISSING))

    def save(self, run: Path | str | None = None) -> None:
        write_json(Path(run or self.run_dir) / SUMMARY_FILE, self.to_dict())

    @classmethod
    def load(cls, run: Path | str) -> WeightsResult:
        """Read ``summary.json``; a missing, corrupt or foreign summary is one line ("re-run")."""
        run = Path(run)
        data = read_run_summary(run, "weight-space lens", "weights", {"top_modules": list},
                                SUMMARY_FILE)
        return cls.from_dict({**data, "run_dir": str(run)})

    def modules(self) -> list[dict[str, Any]]:
        """Every module's row (``modules.json``), ranked."""
        return read_json(Path(self.run_dir) / MODULES_FILE)

    def top_tokens(self, n: int = 20) -> list[str]:
        """``n`` readout tokens across the top modules: the tokens of the best-sign readouts of
        each read module's top singular vector, ordered by how many modules they recur in
        (ties: module rank, then position), each token once (compared stripped).

        Recurrence, because a token that several changed modules point at is the finetune's,
        while one module's idiosyncratic neighbours are noise: on five shipped organisms this
        put 9 domain words into the top 20s against 5 for a round-robin over the modules."""
        counts: dict[str, int] = {}
        first: dict[str, str] = {}
        for row in self.readouts:
            if not row.get("vectors"):
                continue
            top = row["vectors"][0]
            for token in top[top["best"]]["tokens"]:
                key = token.strip() or token
                counts[key] = counts.get(key, 0) + 1
                first.setdefault(key, token)
        order = sorted(counts, key=lambda k: -counts[k])  # stable: first appearance breaks ties
        return [first[k] for k in order[:n]]


def weights_tokens(run_dir: Path | str, top: int = 20) -> list[str]:
    """The top readout tokens of a finished weight-space lens run (for the zoo evaluation)."""
    return WeightsResult.load(run_dir).top_tokens(top)


#: What a field absent from ``summary.json`` reads as (``top_modules`` is required).
_MISSING: dict[str, Any] = {
    "run_dir": "", "base": "", "finetuned": "", "method": "", "rank_by": "norm", "hidden": 0,
    "n_modules": 0, "n_changed": 0, "no_difference": False, "max_norm": 0.0, "heatmap": {},
    "readouts": [],
}
