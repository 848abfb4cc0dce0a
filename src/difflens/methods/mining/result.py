"""Diff Mining artifacts: one definition per file, shared by the writer and the reader.

Run directory layout::

    run.json, stages.json      RunDir bookkeeping (config, finished stages)
    counts.safetensors         CorpusCounts: Top-K counts, moments, sampled top-K, corpus ids
    orderings.json             promoted / suppressed orderings (top ``config.top`` each)
    nmf.json                   NMF topics (or {"skipped": why})
    examples.json              example contexts of the top promoted tokens
    relevance.json             token relevance, when a grader was given
    summary.json               MiningResult
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

if TYPE_CHECKING:  # torch loads only with the counts, so readers of a summary stay light
    import torch

    from difflens.methods.mining.aggregate import MiningCounts

COUNTS_FILE = "counts.safetensors"
EXTRACT_TIMING_FILE = "extract_seconds.json"
ORDERINGS_FILE = "orderings.json"
NMF_FILE = "nmf.json"
EXAMPLES_FILE = "examples.json"
RELEVANCE_FILE = "relevance.json"
SUMMARY_FILE = "summary.json"


@dataclass
class CorpusCounts:
    """The extraction stage's output: counts plus the tokenised corpus they were read from.

    ``ids``, ``attention``: ``(N, T)`` (int32 / bool on disk); ``layer``: layer unembedded;
    ``seconds``: wall time of the extraction.
    """

    counts: MiningCounts
    ids: torch.Tensor
    attention: torch.Tensor
    layer: int
    seconds: float = 0.0

    def save(self, run: Path) -> None:
        import torch

        tensors, meta = self.counts.to_tensors()
        tensors = {**tensors, "corpus_ids": self.ids.to(torch.int32),
                   "corpus_attention": self.attention.to(torch.uint8)}
        # The wall time goes beside the tensors, not into them: the same run must give a
        # byte-identical counts file.
        write_tensors(run / COUNTS_FILE, tensors, {**meta, "layer": str(self.layer)})
        write_json(run / EXTRACT_TIMING_FILE, {"seconds": self.seconds})

    @classmethod
    def load(cls, run: Path) -> CorpusCounts:
        from difflens.methods.mining.aggregate import MiningCounts

        tensors, meta = read_tensors(run / COUNTS_FILE)
        ids = tensors.pop("corpus_ids").long()
        attention = tensors.pop("corpus_attention").bool()
        timing = read_optional_json(run / EXTRACT_TIMING_FILE) or {}
        seconds = timing.get("seconds", meta.get("seconds", 0.0))  # older runs: in the metadata
        return cls(MiningCounts.from_tensors(tensors, meta), ids, attention, int(meta["layer"]),
                   float(seconds))


@dataclass
class MiningResult:
    """What a Diff Mining run found (``summary.json``); full tables live beside it."""

    run_dir: str
    base: str
    finetuned: str
    lens: str
    layer: int
    n_texts: int
    n_positions: int
    vocab: int
    top_k: int
    no_difference: bool
    max_abs_delta: float
    promoted: list[dict[str, Any]]  # top rows of the Top-K occurrence ordering
    suppressed: list[dict[str, Any]]
    topics: dict[str, Any] | None  # nmf.json (None when skipped by --topics 0)
    examples: list[dict[str, Any]]
    relevance: dict[str, Any] | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, run: Path | None = None) -> None:
        write_json(Path(run or self.run_dir) / SUMMARY_FILE, self.to_dict())

    @classmethod
    def load(cls, run: Path | str) -> MiningResult:
        """Read ``summary.json`` of the run in ``run``.

        Fields a summary lacks (one written by an older difflens, or assembled by hand) read as
        :data:`_MISSING` gives them; keys this class does not know are ignored.  A run without
        a summary, or one that does not parse or has no ``promoted`` list, is a one-line
        :class:`DifflensError` naming the directory and saying to re-run.
        """
        run = Path(run)
        data = read_run_summary(run, "Diff Mining", "mine", {"promoted": list}, SUMMARY_FILE)
        return cls(**known_fields(cls, {**data, "run_dir": str(run)}, _MISSING))

    def top_tokens(self, n: int = 20) -> list[str]:
        """The ``n`` most promoted tokens (Top-K occurrence), as decoded."""
        return [row["token"] for row in self.promoted[:n]]

    def orderings(self) -> dict[str, Any]:
        """The full ``orderings.json`` of this run."""
        return read_json(Path(self.run_dir) / ORDERINGS_FILE)


#: What a field absent from ``summary.json`` reads as (``promoted`` is required).
_MISSING: dict[str, Any] = {
    "base": "", "finetuned": "", "lens": "", "layer": 0, "n_texts": 0, "n_positions": 0,
    "vocab": 0, "top_k": 0, "no_difference": False, "max_abs_delta": 0.0, "suppressed": [],
    "topics": None, "examples": [],
}
