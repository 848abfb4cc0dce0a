"""Per-token KL artifacts: one class, :class:`KLResult`, writes and reads every file of a run.

Run directory layout::

    run.json, stages.json      RunDir bookkeeping (config, finished stages)
    layer.json                 the readout layer choice (when --layers was not given)
    kl.safetensors             the pass: KLStats tensors (per-position values, sums, histograms,
                               top stores, fingerprint) and the tokenised corpus
    kl_seconds.json            wall time of the pass (kept out of the tensors: reruns give
                               byte-identical files)
    summary.json               KLResult
    report.html                written by ``difflens report`` / the API after the run
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from difflens.io.artifacts import (
    known_fields,
    read_json,
    read_optional_json,
    read_run_summary,
    read_tensors,
    write_json,
    write_tensors,
)

if TYPE_CHECKING:  # torch loads only with the tensors, so readers of a summary stay light
    import torch

    from difflens.methods.kl.aggregate import KLStats
    from difflens.stats.layer_choice import LayerChoice

LAYER_FILE = "layer.json"
PASS_FILE = "kl.safetensors"
PASS_TIMING_FILE = "kl_seconds.json"
SUMMARY_FILE = "summary.json"


@dataclass
class KLPass:
    """The pass stage's output: the statistics and the tokenised corpus they were read from.

    ``ids``: ``(N, T)`` int64; ``valid``: ``(N, T)`` bool (positions that count)."""

    stats: KLStats
    ids: torch.Tensor
    valid: torch.Tensor
    seconds: float = 0.0


@dataclass
class KLResult:
    """What a per-token KL run found (``summary.json``); the tensors live in ``kl.safetensors``.

    ``stats``: per statistic (``forward``, ``reverse``, ``symmetric``, ``norm_<layer>``) its
    count, mean, std, max and quantiles; ``per_position``: mean per position index;
    ``histograms``: counts over ``hist_edges`` (one bin below the first edge, one above the
    last); ``top_contexts``: per ranked statistic, the highest positions with their windows
    (decoded tokens, per-token values, the peak's index, each model's top next token);
    ``fingerprint``: ``{"top": rows, "bottom": rows, "total": Σ}`` (rows: id, token,
    contribution, share of the total, mean p_ft, mean p_base), None with --no-fingerprint.
    """

    run_dir: str
    base: str
    finetuned: str
    divergence: str
    corpus: str
    n_texts: int
    n_positions: int
    max_tokens: int
    vocab: int
    layers: list[int]
    no_difference: bool
    stats: dict[str, dict[str, Any]]
    per_position: dict[str, list[float | None]]
    histograms: dict[str, list[int]]
    hist_edges: list[float]
    top_contexts: dict[str, list[dict[str, Any]]]
    fingerprint: dict[str, Any] | None
    readout_layer: int | None = None
    layer_choice: dict[str, Any] | None = None
    vocab_note: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    report: str | None = None

    # ---- summary.json -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, run: Path | str | None = None) -> None:
        write_json(Path(run or self.run_dir) / SUMMARY_FILE, self.to_dict())

    @classmethod
    def load(cls, run: Path | str) -> KLResult:
        """Read ``summary.json`` of the run in ``run``.

        Fields an older summary lacks read as :data:`_MISSING` gives them; unknown keys are
        ignored.  No summary, or one that does not parse or has no ``stats``, is a one-line
        :class:`DifflensError` naming the directory and saying to re-run."""
        run = Path(run)
        data = read_run_summary(run, "per-token KL", "kl", {"stats": dict}, SUMMARY_FILE)
        values = known_fields(cls, {**data, "run_dir": str(run)}, _MISSING)
        values["layers"] = [int(x) for x in values["layers"]]
        return cls(**values)

    # ---- typed views --------------------------------------------------------------------------
    @property
    def ranked(self) -> str:
        """The statistic that ranks positions: the chosen divergence."""
        return self.divergence

    def contexts(self, name: str | None = None) -> list[dict[str, Any]]:
        """Top contexts of ``name`` (default: the chosen divergence)."""
        return self.top_contexts.get(name or self.divergence, [])

    def fingerprint_tokens(self, n: int = 20, sign: str = "top") -> list[str]:
        """The ``n`` tokens carrying the most (``top``) or most negative (``bottom``) KL."""
        return [row["token"] for row in (self.fingerprint or {}).get(sign, [])[:n]]

    def load_pass(self) -> KLPass:
        """The pass's tensors (per-position values of every text, sums, stores)."""
        return KLResult.read_pass(Path(self.run_dir))

    # ---- the stages' files --------------------------------------------------------------------
    @staticmethod
    def write_pass(run: Path, result: KLPass) -> None:
        """Write the pass stage's tensors (``kl.safetensors``) and its wall time."""
        import torch

        tensors, meta = result.stats.to_tensors()
        tensors = {**tensors, "corpus_ids": result.ids.to(torch.int32),
                   "corpus_valid": result.valid.to(torch.uint8)}
        write_tensors(run / PASS_FILE, tensors, meta)
        write_json(run / PASS_TIMING_FILE, {"seconds": result.seconds})

    @staticmethod
    def read_pass(run: Path) -> KLPass:
        from difflens.methods.kl.aggregate import KLStats

        tensors, meta = read_tensors(run / PASS_FILE, what="KL pass", fix="re-run `difflens kl`")
        ids = tensors.pop("corpus_ids").long()
        valid = tensors.pop("corpus_valid").bool()
        timing = read_optional_json(run / PASS_TIMING_FILE) or {}
        return KLPass(KLStats.from_tensors(tensors, meta), ids, valid,
                      float(timing.get("seconds", 0.0)))

    @staticmethod
    def write_layer(run: Path, choice: LayerChoice) -> None:
        write_json(run / LAYER_FILE, choice.to_dict())

    @staticmethod
    def read_layer(run: Path) -> LayerChoice:
        from difflens.stats.layer_choice import LayerChoice

        return LayerChoice.from_dict(read_json(run / LAYER_FILE, expect=dict,
                                               fix="re-run `difflens kl` into a fresh --out"))


#: What a field absent from ``summary.json`` reads as (``stats`` is required).
_MISSING: dict[str, Any] = {
    "base": "", "finetuned": "", "divergence": "forward", "corpus": "", "n_texts": 0,
    "n_positions": 0, "max_tokens": 0, "vocab": 0, "layers": [], "no_difference": False,
    "per_position": {}, "histograms": {}, "hist_edges": [], "top_contexts": {},
    "fingerprint": None,
}
