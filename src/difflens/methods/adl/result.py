"""ADL's run directory: one definition of its files and keys, shared by the writer and readers.

Run directory layout::

    run.json, stages.json         RunDir bookkeeping (config, finished stages, timings)
    activation_diff.safetensors   δ̄ per layer and position        (collect_stage.DiffCollection)
    norms.json                    ν per model and layer             (collect_stage.DiffCollection)
    logit_lens.json               LayerLens per layer               (lens_stage.lens_readouts)
    patchscope.json               Patchscope                        (patchscope.patchscope_stage)
    steering.json                 Steering                          (steering.steering_stage)
    relevance.json                Relevance                         (relevance.relevance_stage)
    similarity.json               Similarity                        (similarity.similarity_stage)
    causal.json                   CausalEffect per dataset          (causal.causal_stage)
    summary.json                  ADLSummary                        (written last, by the runner)
    report.html                   the report (api.py)

The stages write their JSON files as they always have (layer keys are strings there, as JSON
object keys must be); :class:`ADLResult` reads every file back as typed records with int
layers (:mod:`difflens.methods.adl.records`), and :class:`ADLSummary` is both what the runner
writes to ``summary.json`` and what readers get from it.  Every consumer — the report, the
agent, the evaluation, ``difflens report`` — reads a run through :class:`ADLResult`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from difflens.errors import DifflensError
from difflens.io.artifacts import read_optional_json, write_json
from difflens.methods.adl.records import (
    CausalEffect,
    Interval,
    LayerLens,
    Patchscope,
    Relevance,
    Similarity,
    Steering,
    causal_effects,
    int_keys,
    lens_layers,
)
from difflens.stats.layer_choice import LayerChoice

if TYPE_CHECKING:
    from difflens.methods.adl.collect_stage import DiffCollection

SUMMARY_FILE = "summary.json"
JSON_STAGES = ("logit_lens", "patchscope", "steering", "relevance", "similarity", "causal")
SUMMARY_TOKENS = 20  # top tokens per layer (and Patchscope) copied into summary.json


def stage_file(stage: str) -> str:
    """The file a JSON stage of :data:`JSON_STAGES` writes (``"steering"`` → ``steering.json``)."""
    if stage not in JSON_STAGES:
        raise ValueError(f"{stage!r} is not one of ADL's JSON stages {JSON_STAGES}")
    return f"{stage}.json"


LENS_FILE = stage_file("logit_lens")


# -- summary.json -------------------------------------------------------------------------------

@dataclass(frozen=True)
class LayerBrief:
    """One layer in ``summary.json``: norms and the top tokens of the mean difference."""

    norm: list[float]
    relative_norm: float
    no_difference: bool
    top_tokens: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {"norm": self.norm, "relative_norm": self.relative_norm,
                "no_difference": self.no_difference, "top_tokens": self.top_tokens}


@dataclass(frozen=True)
class PatchscopeBrief:
    scale: float | None
    tokens: list[str]
    """Coherent tokens at the chosen scale."""


@dataclass(frozen=True)
class SteeringBrief:
    found: bool | None
    alpha: float | None
    search_alpha: float | None = None
    coherent_fraction: float | None = None
    reason: str | None = None
    example: str | None = None
    """The first steered sample (absent when there are none)."""

    def to_dict(self) -> dict[str, Any]:
        out = {"found": self.found, "alpha": self.alpha, "search_alpha": self.search_alpha,
               "coherent_fraction": self.coherent_fraction, "reason": self.reason}
        return out if self.example is None else {**out, "example": self.example}


@dataclass(frozen=True)
class ComparisonBrief:
    """A similarity comparison with the steered / unsteered means only."""

    model: str
    against: str
    difference: float
    p_value: float
    steered: float
    unsteered: float


@dataclass(frozen=True)
class SimilarityBrief:
    intervals: dict[str, Interval]  # "steered_finetune", "unsteered_finetune"
    p_value: float | None
    steered_above_unsteered: bool | None
    comparisons: list[ComparisonBrief]

    @classmethod
    def of(cls, sim: Similarity) -> SimilarityBrief:
        return cls({k: v for k, v in sim.intervals.items()
                    if k in ("steered_finetune", "unsteered_finetune")},
                   sim.p_value, sim.steered_above_unsteered,
                   [ComparisonBrief(c.model, c.against, c.difference, c.p_value, c.steered.mean,
                                    c.unsteered.mean) for c in sim.comparisons])

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: v.to_dict() for k, v in self.intervals.items()}
        for key in ("p_value", "steered_above_unsteered"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        out["comparisons"] = [asdict(c) for c in self.comparisons]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SimilarityBrief:
        return cls({k: Interval.from_dict(data[k]) for k in ("steered_finetune",
                                                            "unsteered_finetune") if k in data},
                   data.get("p_value"), data.get("steered_above_unsteered"),
                   [ComparisonBrief(c["model"], c["against"], c["difference"], c["p_value"],
                                    c["steered"], c["unsteered"])
                    for c in data.get("comparisons") or []])


@dataclass(frozen=True)
class CausalBrief:
    delta_ce: float | None
    outside_random_range: bool | None


@dataclass(frozen=True)
class ADLSummary:
    """``summary.json``: what an ADL run found, in brief (the stage files hold the rest).

    Written by the runner (:meth:`build`, :meth:`save`) and read back by :class:`ADLResult`.
    Summaries written by older versions lack the newer fields (``layer_choice``, the steering
    search's strength and coherent share, the similarity comparisons): they read as ``None`` /
    empty.  :meth:`to_dict` gives the current format.
    """

    layer: int
    """The readout layer."""
    layer_choice: LayerChoice | None = None
    run_dir: str | None = None
    base: str | None = None
    finetuned: str | None = None
    description: str | None = None
    n_texts: int | None = None
    k: int | None = None
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    layers: dict[int, LayerBrief] = field(default_factory=dict)
    patchscope: PatchscopeBrief | None = None
    steering: SteeringBrief | None = None
    similarity: SimilarityBrief | None = None
    causal: dict[str, CausalBrief] | None = None
    relevance: dict[str, float] | None = None
    """Fraction of relevant tokens per readout, rounded to 2 places."""
    report: str | None = None
    """Path of ``report.html`` once rendered."""

    @classmethod
    def build(cls, *, run_dir: Path, base: str, finetuned: str, description: str | None,
              choice: LayerChoice, n_texts: int, k: int, notes: list[str],
              timings: dict[str, float], lens: dict[int, LayerLens],
              patchscope: Patchscope | None, steering: Steering | None,
              relevance: Relevance | None, similarity: Similarity | None,
              causal: dict[str, CausalEffect] | None) -> ADLSummary:
        """The summary of a run from its stages' records (``None``: the stage did not run)."""
        layers = {lay: LayerBrief(v.norm, v.relative_norm, v.no_difference,
                                  v.mean.tokens[:SUMMARY_TOKENS]) for lay, v in lens.items()}
        patch = None
        if patchscope is not None and patchscope.chosen is not None:
            patch = PatchscopeBrief(patchscope.chosen.scale,
                                    patchscope.chosen.coherent_tokens[:SUMMARY_TOKENS])
        steer = None
        if steering is not None:
            steered = steering.samples.steered
            steer = SteeringBrief(steering.found, steering.alpha, steering.search_alpha,
                                  steering.coherent_fraction, steering.reason,
                                  steered[0] if steered else None)
        rel = None
        if relevance is not None and not relevance.skipped:
            rel = {name: round(r.fraction, 2) for name, r in relevance.readouts.items()}
        return cls(choice.layer, choice, str(run_dir), base, finetuned, description, n_texts, k,
                   notes, timings, layers, patch, steer,
                   SimilarityBrief.of(similarity) if similarity is not None else None,
                   {ds: CausalBrief(e.delta_ce, e.outside_random_range)
                    for ds, e in causal.items()} if causal else None,
                   rel)

    def to_dict(self) -> dict[str, Any]:
        """The JSON of ``summary.json`` (keys in the order they are written)."""
        out: dict[str, Any] = {"run_dir": self.run_dir, "base": self.base,
                               "finetuned": self.finetuned, "description": self.description,
                               "layer": self.layer}
        if self.layer_choice is not None:
            out["layer_choice"] = self.layer_choice.to_dict()
        out |= {"n_texts": self.n_texts, "k": self.k, "notes": list(self.notes),
                "timings": dict(self.timings),
                "layers": {str(lay): b.to_dict() for lay, b in self.layers.items()}}
        if self.patchscope is not None:
            out["patchscope"] = {"scale": self.patchscope.scale, "tokens": self.patchscope.tokens}
        if self.steering is not None:
            out["steering"] = self.steering.to_dict()
        if self.similarity is not None:
            out["similarity"] = self.similarity.to_dict()
        if self.causal is not None:
            out["causal"] = {ds: {"delta_ce": c.delta_ce,
                                  "outside_random_range": c.outside_random_range}
                             for ds, c in self.causal.items()}
        if self.relevance is not None:
            out["relevance"] = dict(self.relevance)
        if self.report is not None:
            out["report"] = self.report
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ADLSummary:
        """Read ``summary.json``'s dict (only ``layer`` is required)."""
        choice = data.get("layer_choice")
        steer = data.get("steering")
        patch = data.get("patchscope")
        return cls(
            layer=int(data["layer"]),
            layer_choice=LayerChoice.from_dict(choice) if choice else None,
            run_dir=data.get("run_dir"), base=data.get("base"),
            finetuned=data.get("finetuned"), description=data.get("description"),
            n_texts=data.get("n_texts"), k=data.get("k"), notes=list(data.get("notes") or []),
            timings=dict(data.get("timings") or {}),
            layers={lay: LayerBrief(list(v["norm"]), v["relative_norm"], v["no_difference"],
                                    list(v.get("top_tokens") or []))
                    for lay, v in int_keys(data.get("layers") or {}).items()},
            patchscope=PatchscopeBrief(patch.get("scale"), list(patch.get("tokens") or []))
            if patch is not None else None,
            steering=SteeringBrief(steer.get("found"), steer.get("alpha"),
                                   steer.get("search_alpha"), steer.get("coherent_fraction"),
                                   steer.get("reason"), steer.get("example"))
            if steer is not None else None,
            similarity=SimilarityBrief.from_dict(data["similarity"])
            if data.get("similarity") is not None else None,
            causal={ds: CausalBrief(v.get("delta_ce"), v.get("outside_random_range"))
                    for ds, v in data["causal"].items()}
            if data.get("causal") is not None else None,
            relevance=dict(data["relevance"]) if data.get("relevance") is not None else None,
            report=data.get("report"))

    def save(self, run_dir: Path | str | None = None) -> None:
        """Write ``summary.json`` into ``run_dir`` (default: :attr:`run_dir`)."""
        target = run_dir or self.run_dir
        if target is None:
            raise ValueError("ADLSummary.save needs a run directory")
        write_json(Path(target) / SUMMARY_FILE, self.to_dict())


# -- reading a run directory --------------------------------------------------------------------

def _one_line(text: object) -> str:
    return " ".join(str(text).split())


class ADLResult:
    """An ADL run directory read through typed records; layers are ints throughout.

    ``ADLResult.load(run_dir)`` reads a finished run (``summary.json`` and ``logit_lens.json``;
    a stage it lacks reads as ``None``); ``partial=True`` reads whatever an unfinished run has
    (the report of an interrupted run); ``ADLResult(run_dir)`` reads the stage files only, not
    the summary.  Stage files are read on first access and kept.  A missing, unparsable or
    too-old file is a one-line :class:`DifflensError` naming the directory and saying to re-run.

    >>> result = ADLResult.load("runs/adl")                                 # doctest: +SKIP
    >>> result.layer, result.readout().mean.tokens[:5], result.layer_choice  # doctest: +SKIP
    >>> result.steering.alpha, result.steering.samples.base_steered          # doctest: +SKIP
    """

    def __init__(self, run_dir: Path | str, summary: ADLSummary | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.summary = summary

    @classmethod
    def load(cls, run_dir: Path | str, partial: bool = False) -> ADLResult:
        run = Path(run_dir)
        if not partial:
            for name in (SUMMARY_FILE, LENS_FILE):
                if not (run / name).is_file():
                    raise DifflensError(f"{run} is not a finished ADL run (no {name}); re-run "
                                        f"`difflens adl --out {run}` to finish it")
        data = cls._json(run, SUMMARY_FILE)
        summary = None if data is None else cls._parse(run, SUMMARY_FILE, ADLSummary.from_dict,
                                                       data)
        result = cls(run, summary)
        if not partial:
            result.lens  # noqa: B018 - a finished run's lens must read: fail now, in one line
        return result

    # -- files ----------------------------------------------------------------------------------

    @staticmethod
    def _unreadable(run: Path, name: str, why: str) -> DifflensError:
        return DifflensError(f"{run} holds an ADL run whose {name} cannot be read ({why}); it is "
                             "corrupt or from an older difflens: re-run `difflens adl` into a "
                             "fresh --out directory")

    @classmethod
    def _json(cls, run: Path, name: str) -> Any:
        try:
            data = read_optional_json(run / name)
        except DifflensError:
            raise cls._unreadable(run, name, "not valid JSON") from None
        if data is not None and not isinstance(data, dict):
            raise cls._unreadable(run, name, f"a JSON {type(data).__name__}, not an object")
        return data

    @classmethod
    def _parse(cls, run: Path, name: str, parse: Any, data: dict[str, Any]) -> Any:
        try:
            return parse(data)
        except KeyError as exc:
            raise cls._unreadable(run, name, f"no {_one_line(exc)}") from None
        except (TypeError, ValueError, AttributeError) as exc:
            raise cls._unreadable(run, name, _one_line(exc)) from None

    def _stage(self, stage: str, parse: Any) -> Any:
        name = stage_file(stage)
        data = self._json(self.run_dir, name)
        return None if data is None else self._parse(self.run_dir, name, parse, data)

    # -- the summary ----------------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        return self.summary is not None

    def _summary(self) -> ADLSummary:
        if self.summary is None:
            raise DifflensError(f"{self.run_dir} is not a finished ADL run (no {SUMMARY_FILE}); "
                                f"re-run `difflens adl --out {self.run_dir}` to finish it")
        return self.summary

    @property
    def layer(self) -> int:
        """The readout layer."""
        return self._summary().layer

    @property
    def layer_choice(self) -> LayerChoice | None:
        """How the readout layer was chosen (``None`` in runs written before the choice)."""
        return self._summary().layer_choice

    # -- the logit lens -------------------------------------------------------------------------

    @cached_property
    def lens(self) -> dict[int, LayerLens]:
        """``logit_lens.json`` by layer, ascending (empty when the stage has not run)."""
        return self._stage("logit_lens", lens_layers) or {}

    @property
    def layers(self) -> list[int]:
        """Every layer the run read, ascending."""
        return list(self.lens)

    def readout(self, layer: int | None = None) -> LayerLens:
        """The logit lens at ``layer`` (default: the readout layer)."""
        layer = self.layer if layer is None else int(layer)
        if layer not in self.lens:
            raise self._unreadable(self.run_dir, LENS_FILE, f"no layer {layer}")
        return self.lens[layer]

    @property
    def relative_norms(self) -> dict[int, float]:
        """‖δ̄‖/ν_ft per layer (mean over positions 1..k-1)."""
        return {lay: info.relative_norm for lay, info in self.lens.items()}

    @property
    def norms(self) -> dict[int, list[float]]:
        """‖δ̄‖ per layer and position."""
        return {lay: info.norm for lay, info in self.lens.items()}

    # -- the other stages (None when the stage did not run) -------------------------------------

    @cached_property
    def patchscope(self) -> Patchscope | None:
        return self._stage("patchscope", Patchscope.from_dict)

    @cached_property
    def steering(self) -> Steering | None:
        return self._stage("steering", Steering.from_dict)

    @cached_property
    def relevance(self) -> Relevance | None:
        return self._stage("relevance", Relevance.from_dict)

    @cached_property
    def similarity(self) -> Similarity | None:
        return self._stage("similarity", Similarity.from_dict)

    @cached_property
    def causal(self) -> dict[str, CausalEffect] | None:
        """ΔCE per dataset (``"finetune"``, ``"reference"``)."""
        return self._stage("causal", causal_effects)

    def difference(self) -> DiffCollection:
        """δ̄ per layer and position and ν per model (loads torch)."""
        from difflens.methods.adl.collect_stage import DIFF_FILE, NORMS_FILE, DiffCollection

        for name in (DIFF_FILE, NORMS_FILE):
            if not (self.run_dir / name).is_file():
                raise DifflensError(f"{self.run_dir} holds no saved difference (no {name}); "
                                    f"re-run `difflens adl --out {self.run_dir}`")
        return DiffCollection.load(self.run_dir)
