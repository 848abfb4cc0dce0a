"""Typed views of ADL's stage artifacts, read through :class:`~.result.ADLResult`.

Each record is built from the dict its stage wrote (``from_dict``); the stages write their JSON
files unchanged, so the files keep their keys and their string layer keys (JSON object keys are
strings).  Here layers are ints.  Fields a stage gained later are optional (``None`` or empty
when absent), so run directories written by older versions read too.  A key a record needs
that is missing raises ``KeyError`` / ``TypeError``, which :class:`ADLResult` turns into a
one-line "re-run" error.  Numbers are kept as JSON gave them (an int stays an int), so a
record written back gives the same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


def int_keys(data: dict[str, Any]) -> dict[int, Any]:
    """``{"3": v}`` → ``{3: v}``, ascending: the one place a JSON layer key becomes an int."""
    return dict(sorted((int(k), v) for k, v in data.items()))


@dataclass(frozen=True)
class Readout:
    """Top tokens of one logit-lens (or Patchscope) readout, largest probability first."""

    tokens: list[str]
    ids: list[int] = field(default_factory=list)
    probs: list[float] = field(default_factory=list)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Readout:
        return cls(list(data["tokens"]), list(data.get("ids") or []),
                   list(data.get("probs") or []))


@dataclass(frozen=True)
class LayerLens:
    """``logit_lens.json`` at one layer (written by :func:`~.lens_stage.lens_readouts`)."""

    layer: int
    positions: list[Readout]
    """δ̄ at each position 0..k-1 (0 is BOS)."""
    mean: Readout
    """δ̄ averaged over positions 1..k-1: the readout the method reports."""
    negative: Readout
    base_mean: Readout
    ft_mean: Readout
    norm: list[float]
    """‖δ̄‖ per position."""
    relative_norm: float
    """‖mean δ̄‖ / ν_ft."""
    no_difference: bool

    @classmethod
    def from_dict(cls, layer: int, data: dict[str, Any]) -> LayerLens:
        row = Readout.from_dict
        return cls(int(layer), [row(r) for r in data["positions"]], row(data["mean"]),
                   row(data["negative"]), row(data["base_mean"]), row(data["ft_mean"]),
                   list(data["norm"]), data["relative_norm"], bool(data["no_difference"]))


def lens_layers(data: dict[str, Any]) -> dict[int, LayerLens]:
    """The logit-lens stage's output (``{"layers": {"<layer>": {...}}}``) by int layer."""
    return {lay: LayerLens.from_dict(lay, info) for lay, info in int_keys(data["layers"]).items()}


@dataclass(frozen=True)
class PatchscopeScale:
    """The tokens every Patchscope prompt shares at one scale (× ν_ft)."""

    scale: float
    tokens: list[str]
    probs: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class PatchscopeChoice:
    """The scale the grader chose and the coherent tokens it read there."""

    scale: float | None
    coherent_tokens: list[str]
    tokens: list[str]
    probs: list[float]
    snapped: bool | None = None


@dataclass(frozen=True)
class Patchscope:
    """``patchscope.json``: a sweep of scales and the chosen one (or why it was skipped)."""

    scales: list[PatchscopeScale]
    chosen: PatchscopeChoice | None
    skipped: str | None = None
    grader: dict[str, Any] | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Patchscope:
        scales = [PatchscopeScale(row["scale"], list(row.get("tokens") or []),
                                  list(row.get("probs") or [])) for row in data.get("scales", [])]
        raw = data.get("chosen") or None
        chosen = None if raw is None else PatchscopeChoice(
            raw.get("scale"), list(raw.get("coherent_tokens") or []),
            list(raw.get("tokens") or []), list(raw.get("probs") or []), raw.get("snapped"))
        return cls(scales, chosen, data.get("skipped"), data.get("grader"))


@dataclass(frozen=True)
class Confirmation:
    """One draw of the final steered samples: its strength and the share graded coherent."""

    alpha: float
    coherent_fraction: float


@dataclass(frozen=True)
class SteeringSamples:
    """The final samples on the same prompts; row ``i`` of each list answers ``prompts[i]``."""

    prompts: list[str] = field(default_factory=list)
    steered: list[str] = field(default_factory=list)
    unsteered: list[str] = field(default_factory=list)
    base_steered: list[str] | None = None
    """The base model steered with the same vector at the same α (newer runs only)."""
    base_unsteered: list[str] | None = None
    confirmed: bool | None = None
    """The steered samples kept the coherence threshold (None: not recorded)."""
    confirmations: list[Confirmation] = field(default_factory=list)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SteeringSamples:
        def texts(key: str) -> list[str] | None:
            return None if data.get(key) is None else list(data[key])

        return cls(list(data.get("prompts") or []), list(data.get("steered") or []),
                   list(data.get("unsteered") or []), texts("base_steered"),
                   texts("base_unsteered"), data.get("confirmed"),
                   [Confirmation(c["alpha"], c["coherent_fraction"])
                    for c in data.get("confirmations") or []])


@dataclass(frozen=True)
class Probe:
    """A strength the steering search generated at (``coherent_fraction`` None: not graded)."""

    alpha: float
    coherent_fraction: float | None


@dataclass(frozen=True)
class Steering:
    """``steering.json``: the strongest coherent strength α (× ν_ft) and samples drawn with it."""

    found: bool
    alpha: float | None
    search_alpha: float | None
    reason: str | None
    samples: SteeringSamples
    probes: list[Probe]

    @property
    def coherent_fraction(self) -> float | None:
        """Coherent share of the final steered samples (the last confirmation)."""
        return self.samples.confirmations[-1].coherent_fraction \
            if self.samples.confirmations else None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Steering:
        probes = [Probe(p["alpha"], p.get("coherent_fraction"))
                  for p in (data.get("search") or {}).get("probes", [])]
        return cls(bool(data.get("found")), data.get("alpha"), data.get("search_alpha"),
                   data.get("reason"), SteeringSamples.from_dict(data.get("samples") or {}),
                   probes)


@dataclass(frozen=True)
class ReadoutRelevance:
    """The grader's verdict on one readout's top tokens against the finetune's description."""

    tokens: list[str]
    relevant: list[bool]
    fraction: float | None
    weighted_fraction: float | None = None
    trivial_baseline: float | None = None


@dataclass(frozen=True)
class Relevance:
    """``relevance.json``: token relevance per readout (empty with ``skipped`` when no
    description was given)."""

    readouts: dict[str, ReadoutRelevance]
    skipped: str | None = None
    grader: dict[str, Any] | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Relevance:
        readouts = {name: ReadoutRelevance(list(r.get("tokens") or []),
                                           list(r.get("relevant") or []), r.get("fraction"),
                                           r.get("weighted_fraction"), r.get("trivial_baseline"))
                    for name, r in (data.get("readouts") or {}).items()}
        return cls(readouts, data.get("skipped"), data.get("grader"))


@dataclass(frozen=True)
class Interval:
    """A mean cosine similarity with its bootstrap interval."""

    mean: float
    ci_low: float
    ci_high: float

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Interval:
        return cls(data["mean"], data["ci_low"], data["ci_high"])

    def to_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "ci_low": self.ci_low, "ci_high": self.ci_high}


@dataclass(frozen=True)
class Comparison:
    """Steered vs unsteered samples of ``model`` ("finetuned" / "base"), both scored against
    ``against`` ("finetune documents" / "description")."""

    model: str
    against: str
    steered: Interval
    unsteered: Interval
    difference: float
    p_value: float
    steered_above_unsteered: bool | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Comparison:
        return cls(data["model"], data["against"], Interval.from_dict(data["steered"]),
                   Interval.from_dict(data["unsteered"]), data["difference"], data["p_value"],
                   data.get("steered_above_unsteered"))


SIMILARITY_INTERVALS = ("steered_finetune", "unsteered_finetune", "steered_reference",
                        "unsteered_reference")


@dataclass(frozen=True)
class Similarity:
    """``similarity.json``: steered vs unsteered samples' similarity to the finetune data."""

    intervals: dict[str, Interval]
    """Those of :data:`SIMILARITY_INTERVALS` the file holds (e.g. ``"steered_finetune"``)."""
    p_value: float | None
    steered_above_unsteered: bool | None
    comparisons: list[Comparison]
    """Every comparison made; the first is the finetuned model against its documents (empty in
    runs written before comparisons existed)."""

    @property
    def steered_finetune(self) -> Interval | None:
        return self.intervals.get("steered_finetune")

    @property
    def unsteered_finetune(self) -> Interval | None:
        return self.intervals.get("unsteered_finetune")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Similarity:
        intervals = {key: Interval.from_dict(data[key]) for key in SIMILARITY_INTERVALS
                     if isinstance(data.get(key), dict)}
        return cls(intervals, data.get("p_value"), data.get("steered_above_unsteered"),
                   [Comparison.from_dict(c) for c in data.get("comparisons") or []])


CAUSAL_DATASETS = ("finetune", "reference")


@dataclass(frozen=True)
class CausalEffect:
    """Projecting δ̄ out on one dataset: ΔCE and the baselines' ΔCE per kind."""

    delta_ce: float | None
    outside_random_range: bool | None
    baselines: dict[str, list[float]]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CausalEffect:
        baselines = {kind: list(v["delta_ce"] if isinstance(v, dict) else v)
                     for kind, v in (data.get("baselines") or {}).items()}
        return cls(data.get("delta_ce"), data.get("outside_random_range"), baselines)


def causal_effects(data: dict[str, Any]) -> dict[str, CausalEffect]:
    """``causal.json`` per dataset (:data:`CAUSAL_DATASETS` the file holds)."""
    return {ds: CausalEffect.from_dict(data[ds]) for ds in CAUSAL_DATASETS
            if isinstance(data.get(ds), dict)}
