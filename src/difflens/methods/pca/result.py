"""PCA artifacts: one class, :class:`PCAResult`, writes and reads every file of a run.

Run directory layout::

    run.json, stages.json      RunDir bookkeeping (config, finished stages)
    layer.json                 the layers analysed and, when chosen, ADL's layer choice
    covariance.safetensors     pass 1: per layer (n, Σδ, Σδδᵀ) float64, Σδ over ADL's positions,
                               Σ‖h_ft‖² (mergeable: runs over shards of a corpus add up)
    components.safetensors     per layer: oriented unit components (C, d) and eigenvalues
    pca.json                   per layer: explained variance, cosines with δ̄_ADL / mean δ, ...
    norms.json                 ν per side and layer (strength unit of Patchscope and steering)
    readout.json               per layer and component: logit lens of +c and −c
    patchscope.json            per layer and component: Patchscope of +c and −c
    contexts.safetensors       pass 2: the top-N store per layer (ids, projections)
    contexts.json              the same, decoded: tokens and per-token projection (heat)
    steering.json              steering along +c for the top components at the first layer
    summary.json               PCAResult (the report, the agent and the CLI summary read it)

JSON keys stay strings in the files; the class gives int layers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from difflens.io.artifacts import (
    known_fields,
    read_optional_json,
    read_run_summary,
    read_tensors,
    write_json,
    write_tensors,
)

if TYPE_CHECKING:  # torch loads with the tensors only: readers of a summary stay light
    import torch

    from difflens.methods.pca.contexts import TopContexts
    from difflens.methods.pca.passes import DeltaStats

LAYER_FILE = "layer.json"
STATS_FILE = "covariance.safetensors"
COMPONENTS_FILE = "components.safetensors"
PCA_FILE = "pca.json"
NORMS_FILE = "norms.json"
READOUT_FILE = "readout.json"
PATCHSCOPE_FILE = "patchscope.json"
CONTEXTS_TENSORS = "contexts.safetensors"
CONTEXTS_FILE = "contexts.json"
STEERING_FILE = "steering.json"
SUMMARY_FILE = "summary.json"
SUMMARY_TOKENS = 20  # readout tokens per sign copied into summary.json


def int_keys(data: dict[str, Any] | None) -> dict[int, Any]:
    return {int(k): v for k, v in (data or {}).items()}


def str_keys(data: dict[int, Any] | None) -> dict[str, Any]:
    return {str(k): v for k, v in (data or {}).items()}


@dataclass
class PCAResult:
    """What a PCA run found (``summary.json``) and the reader / writer of its other files.

    ``pca[layer]``: ``{"count", "eigenvalues", "explained", "cumulative", "total_variance",
    "mean_norm", "mean_share", "adl_norm", "cos_adl", "cos_mean", "rms_ratio",
    "no_difference"}`` (lists per component); ``readouts[layer]``: per component
    ``{"component", "positive": {"tokens", "probs"}, "negative": ...}``; ``patchscope[layer]``:
    per component the chosen scale per sign; ``steering``: per steered component ``{"component",
    "found", "alpha", "reason", "prompts", "steered", "unsteered"}``.
    """

    run_dir: str
    base: str
    finetuned: str
    layers: list[int]
    n_texts: int
    n_positions: int
    max_tokens: int
    d: int
    n_components: int
    readout_components: int
    no_difference: bool
    pca: dict[int, dict[str, Any]]
    readouts: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    layer_choice: dict[str, Any] | None = None
    patchscope: dict[int, list[dict[str, Any]]] | None = None
    steering: list[dict[str, Any]] | None = None
    steering_layer: int | None = None
    notes: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    report: str | None = None

    # -- summary.json ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for name in ("pca", "readouts", "patchscope"):
            data[name] = None if data[name] is None else str_keys(data[name])
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PCAResult:
        values = known_fields(cls, data, _MISSING)
        for name in ("pca", "readouts", "patchscope"):
            if values.get(name) is not None:  # optional fields may be absent (defaults)
                values[name] = int_keys(values[name])
        values["layers"] = [int(x) for x in values["layers"]]
        return cls(**values)

    def save(self, run: Path | str | None = None) -> None:
        write_json(Path(run or self.run_dir) / SUMMARY_FILE, self.to_dict())

    @classmethod
    def load(cls, run: Path | str) -> PCAResult:
        """Read ``summary.json``; an unfinished or unreadable run is one line saying to re-run."""
        run = Path(run)
        data = read_run_summary(run, "PCA", "pca", {"pca": dict, "layers": list}, SUMMARY_FILE)
        return cls.from_dict({**data, "run_dir": str(run)})

    @property
    def layer(self) -> int:
        """The first analysed layer (ADL's readout layer unless --layers was given)."""
        return self.layers[0]

    # -- the other artifacts ----------------------------------------------------------------------
    @staticmethod
    def save_stats(run: Path, stats: DeltaStats) -> None:
        tensors, meta = stats.to_tensors()
        write_tensors(Path(run) / STATS_FILE, tensors, meta)

    def stats(self) -> DeltaStats:
        """Pass 1's accumulators (covariance per layer, mergeable with another run's)."""
        return self.load_stats(self.run_dir)

    @staticmethod
    def load_stats(run: Path | str) -> DeltaStats:
        from difflens.methods.pca.passes import DeltaStats

        return DeltaStats.from_tensors(*read_tensors(Path(run) / STATS_FILE,
                                                     fix="re-run `difflens pca`"))

    @staticmethod
    def save_components(run: Path, components: dict[int, torch.Tensor],
                        eigenvalues: dict[int, torch.Tensor]) -> None:
        tensors = {f"components.{la}": c for la, c in components.items()}
        tensors.update({f"eigenvalues.{la}": e for la, e in eigenvalues.items()})
        write_tensors(Path(run) / COMPONENTS_FILE, tensors,
                      {"layers": ",".join(map(str, components))})

    def components(self, layer: int | None = None) -> torch.Tensor:
        """``(C, d)`` oriented unit components at ``layer`` (default: the first layer)."""
        return self.load_components(self.run_dir)[self.layer if layer is None else layer]

    @staticmethod
    def load_components(run: Path | str) -> dict[int, torch.Tensor]:
        tensors, meta = read_tensors(Path(run) / COMPONENTS_FILE, fix="re-run `difflens pca`")
        return {int(la): tensors[f"components.{la}"] for la in meta["layers"].split(",") if la}

    @staticmethod
    def save_contexts(run: Path, stores: dict[int, TopContexts], tokenizer: Any) -> None:
        tensors: dict[str, Any] = {}
        meta: dict[str, str] = {"layers": ",".join(map(str, stores))}
        for layer, store in stores.items():
            t, m = store.to_tensors()
            tensors.update({f"{name}.{layer}": v for name, v in t.items()})
            meta.update(m)
        write_tensors(Path(run) / CONTEXTS_TENSORS, tensors, meta)
        write_json(Path(run) / CONTEXTS_FILE,
                   {str(la): s.decoded(tokenizer) for la, s in stores.items()})

    def contexts(self) -> dict[int, list[dict[str, list[dict[str, Any]]]]]:
        """Per layer, per component: ``{"positive": [...], "negative": [...]}`` top contexts
        (empty when the stage was skipped)."""
        return int_keys(read_optional_json(Path(self.run_dir) / CONTEXTS_FILE))

    def steering_details(self) -> list[dict[str, Any]]:
        """The full steering record per steered component (search, probes, all samples)."""
        return read_optional_json(Path(self.run_dir) / STEERING_FILE) or []

    def read(self, name: str) -> Any:
        """One JSON artifact by file name (None when its stage did not run)."""
        return read_optional_json(Path(self.run_dir) / name)


#: What a field absent from ``summary.json`` reads as (``pca`` and ``layers`` are required).
_MISSING: dict[str, Any] = {
    "run_dir": "", "base": "", "finetuned": "", "n_texts": 0, "n_positions": 0, "max_tokens": 0,
    "d": 0, "n_components": 0, "readout_components": 0, "no_difference": False, "readouts": {},
}
