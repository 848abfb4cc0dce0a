"""Steering along a direction: the largest coherent strength, by batched look-ahead bisection.

Engine code (a vector and a layer in, samples out): ADL steers with δ̄ (its stage is
``methods/adl/steering.py``), PCA with a principal component.

Strengths α are in units of ν_ft: the finetuned model gets ``α·v`` (``v = u/‖u‖ · ν_ft`` for the
direction ``u``) added
at every position of the readout layer while it answers neutral chat prompts.  A strength is
*coherent* when at least ``coherent_fraction`` (75%) of its samples pass ``grader.coherent``.

The search bisects ``[0, α_max]`` for ``steps = ceil(log2(α_max / tolerance))`` decisions.  The
sequential form generates one strength per decision.  The batched form looks ``lookahead``
decisions ahead: it generates all ``2^lookahead − 1`` midpoints the next decisions could need in
ONE batch, then replays the sequential decisions from that table.  Generation rows are
independent of their batch (see :mod:`difflens.models.generation`), so both forms evaluate
identical samples at identical strengths and make identical decisions; the batched one needs
``lookahead`` times fewer rounds at the price of some speculative strengths.  Speculative
strengths are generated but, with a local grader, graded only when a decision needs them
(grading costs a base-model pass per sample on CPU); with an LLM grader every strength of a
round is graded in one wave of concurrent requests, trading tokens for round trips.

Bisection assumes coherence falls with α.  When it does not, the result is still a strength
that passed with a failing one ≤ tolerance above it, not necessarily the largest such.

**Confirmation.**  The search judges a strength on the first ``search_prompts`` prompts; the
final samples use all ``final_prompts``.  Found strengths sit at the coherence boundary, where
8 prompts are a small test: over the zoo, samples at the found strength were only 55-70%
coherent on the 20 final prompts for two of four organisms ("cake cake cake ..."), which then
lowered their steering similarity.  So the final steered samples are graded too, and while
fewer than ``coherent_fraction`` pass, the strength backs off (:func:`next_lower`: the largest
lower strength that passed a decision, else half) and they are drawn again, at most
``max_backoffs`` times.  When the search's strength holds, this costs one grading of 20 samples.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from difflens.data.chat import chat_prompt
from difflens.models.generation import SamplingConfig, Steer, generate
from difflens.models.pair import BASE
from difflens.models.patchscope import unit_scaled

if TYPE_CHECKING:
    from difflens.models.pair import ModelPair

Evaluate = Callable[[list[float]], "Sequence[float] | Callable[[float], float]"]
"""strengths -> the coherent fraction of each strength's samples, either as a list (graded at
once) or as a function ``alpha -> fraction`` called only for strengths a decision uses."""


@dataclass(frozen=True)
class SteeringConfig:
    """Settings of the steering search and of the final samples (all recorded in the result)."""

    alpha_max: float = 2.0  # upper end of the bracket, in units of ν_ft (2 typical norms)
    tolerance: float = 0.05  # stop once the bracket is at most this wide (ν_ft units)
    coherent_fraction: float = 0.75  # share of coherent samples for a strength to pass
    lookahead: int = 2  # decisions per batched round: 2^lookahead − 1 strengths per batch
    search_prompts: int = 8  # first prompts used by the search
    samples_per_prompt: int = 1  # samples per search prompt and strength
    final_prompts: int = 20  # prompts of the final steered / unsteered samples
    batch_size: int = 64  # rows per generate call (memory cap; results do not depend on it)
    grade_speculative: bool | None = None  # grade unused strengths too; None: only LLM graders
    max_backoffs: int = 3  # final samples failing coherence: lower the strength this often
    unsteered_reference: bool = True  # give the unsteered samples to grader.set_reference
    base_samples: bool = True  # also sample the base model, steered at the final strength
    sampling: SamplingConfig = field(default_factory=SamplingConfig)

    @property
    def steps(self) -> int:
        """Bisection decisions needed to bring ``[0, α_max]`` down to ``tolerance``."""
        return max(1, math.ceil(math.log2(self.alpha_max / self.tolerance)))

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["steps"] = self.steps
        return out

    def replace(self, **changes: Any) -> SteeringConfig:
        return dataclasses.replace(self, **changes)


@dataclass
class Probe:
    """One strength tried: its coherent fraction (None: generated speculatively, never needed,
    not graded) and whether a decision used it."""

    alpha: float
    coherent_fraction: float | None
    round: int
    on_path: bool = False


@dataclass
class SearchResult:
    """Outcome of a bisection; ``alpha`` is the largest strength that passed (None: none)."""

    found: bool
    alpha: float | None
    bracket: tuple[float, float]
    probes: list[Probe]
    decisions: list[tuple[float, bool]]  # (strength, passed) in decision order
    rounds: int
    reason: str | None = None

    @property
    def upper_bound_coherent(self) -> bool:
        """Every decision passed: the boundary may lie above α_max."""
        return bool(self.decisions) and all(ok for _, ok in self.decisions)

    def to_dict(self) -> dict[str, Any]:
        return {
            "found": self.found, "alpha": self.alpha, "bracket": list(self.bracket),
            "reason": self.reason, "rounds": self.rounds,
            "upper_bound_coherent": self.upper_bound_coherent,
            "decisions": [{"alpha": a, "coherent": ok} for a, ok in self.decisions],
            "probes": [dataclasses.asdict(p) for p in self.probes],
        }


# -- pure core ----------------------------------------------------------------------------------
def decision_tree(lo: float, hi: float, depth: int) -> list[float]:
    """Every midpoint the next ``depth`` bisection decisions of ``[lo, hi]`` could ask for.

    Midpoints are computed as ``(lo + hi) / 2`` exactly as a sequential bisection would, so the
    replay in :func:`bisect` finds them by exact float equality.  ``2^depth − 1`` values, sorted.
    """
    if depth <= 0:
        return []
    mid = (lo + hi) / 2
    return sorted([*decision_tree(lo, mid, depth - 1), mid, *decision_tree(mid, hi, depth - 1)])


def bisect(
    evaluate: Evaluate, alpha_max: float, steps: int, threshold: float, lookahead: int = 1
) -> SearchResult:
    """Bisect ``[0, alpha_max]`` for the largest strength whose fraction is ≥ ``threshold``.

    ``lookahead = 1`` is the plain sequential search; larger values batch the next
    ``lookahead`` decisions into one ``evaluate`` call (same decisions, fewer calls).  0 is
    assumed to pass and ``alpha_max`` to fail; neither is evaluated.  When ``evaluate`` returns
    a function, only the strengths on the decision path are graded.
    """
    if lookahead < 1:
        raise ValueError(f"lookahead must be >= 1, got {lookahead}")
    lo, hi = 0.0, float(alpha_max)
    probes: list[Probe] = []
    decisions: list[tuple[float, bool]] = []
    rounds = 0
    while len(decisions) < steps:
        depth = min(lookahead, steps - len(decisions))
        points = decision_tree(lo, hi, depth)
        fractions = evaluate(points)
        rounds += 1
        table = {alpha: Probe(alpha, None, rounds) for alpha in points}
        probes.extend(table.values())
        if not callable(fractions):
            if len(fractions) != len(points):
                raise ValueError(f"evaluate returned {len(fractions)} values for {len(points)}")
            for alpha, frac in zip(points, fractions, strict=True):
                table[alpha].coherent_fraction = float(frac)
        for _ in range(depth):
            mid = (lo + hi) / 2
            probe = table[mid]
            probe.on_path = True
            if probe.coherent_fraction is None:
                probe.coherent_fraction = float(fractions(mid))
            passed = probe.coherent_fraction >= threshold
            decisions.append((mid, passed))
            lo, hi = (mid, hi) if passed else (lo, mid)
    found = lo > 0.0
    reason = None
    if not found:
        smallest = min((p for p in probes if p.on_path), key=lambda p: p.alpha)
        reason = (f"no strength above 0 kept {threshold:.0%} of samples coherent (smallest tried: "
                  f"α={smallest.alpha:.4g}, {smallest.coherent_fraction:.0%} coherent)")
    return SearchResult(found, lo if found else None, (lo, hi), probes, decisions, rounds, reason)


def next_lower(decisions: Sequence[tuple[float, bool]], alpha: float) -> float:
    """The strength to fall back to when the final samples at ``alpha`` fail: the largest
    strength below ``alpha`` that passed a search decision, else ``alpha / 2``."""
    passed = [a for a, ok in decisions if ok and a < alpha]
    return max(passed) if passed else alpha / 2


# -- model-facing -------------------------------------------------------------------------------
class CoherenceProbe:
    """``evaluate`` for :func:`bisect`: generates every strength × search prompt in one batch and
    asks the grader which samples are coherent; keeps samples, token counts and time.

    The unsteered samples of all final prompts ride along in the first batch: they are the
    grader's coherence reference (set before anything is judged), the final unsteered samples,
    and (those of the search prompts, judged with the first round) the baseline coherence.
    """

    def __init__(self, pair: ModelPair, v: torch.Tensor, layer: int, grader: Any,
                 prompts: Sequence[str], config: SteeringConfig) -> None:
        self.pair, self.v, self.layer, self.grader, self.config = pair, v, layer, grader, config
        self.final = list(prompts[: config.final_prompts])
        self.search = self.final[: config.search_prompts]
        self.unsteered: list[str] | None = None
        self.baseline: float | None = None  # coherent share of the unsteered search samples
        self.log: list[dict[str, Any]] = []  # one entry per evaluate call
        self.generated_tokens = self.token_slots = 0
        self.generate_seconds = self.grade_seconds = 0.0

    def unsteered_rows(self) -> tuple[list[str], list[Steer | None], list[int]]:
        spp = self.config.samples_per_prompt
        return self.final, [None] * len(self.final), [i * spp for i in range(len(self.final))]

    @property
    def grade_all(self) -> bool:
        """Grade every strength of a round at once (LLM graders: one wave of requests)."""
        if self.config.grade_speculative is not None:
            return self.config.grade_speculative
        return getattr(self.grader, "backend", "offline") == "llm"

    def __call__(self, alphas: list[float]) -> list[float] | Callable[[float], float]:
        spp = self.config.samples_per_prompt
        prompts, steers, keys = [], [], []
        for alpha in alphas:
            for i, prompt in enumerate(self.search):
                for s in range(spp):
                    prompts.append(prompt)
                    steers.append(Steer(self.v, self.layer, alpha))
                    keys.append(i * spp + s)  # same key at every strength: common noise
        n_steered = len(prompts)
        first = self.unsteered is None
        if first:
            extra = self.unsteered_rows()
            prompts, steers, keys = prompts + extra[0], steers + extra[1], keys + extra[2]
        gens = self.generate_rows(prompts, steers, keys)
        texts = gens.texts[:n_steered]
        if first:
            self.set_unsteered(gens.texts[n_steered:])
        per = len(self.search) * spp
        by_alpha = {a: texts[j * per:(j + 1) * per] for j, a in enumerate(alphas)}
        self.log.append({"alphas": list(alphas), "rows": len(prompts),
                         "generated_tokens": gens.total_new_tokens,
                         "token_slots": gens.token_slots, "seconds": round(gens.seconds, 3),
                         "samples": {str(a): t for a, t in by_alpha.items()}})
        # The unsteered search samples (baseline coherence) ride with the first judgement.
        pending_baseline = self.unsteered[: len(self.search)] if first else []

        def judge_with_baseline(samples: list[str]) -> list[bool]:
            nonlocal pending_baseline
            baseline, pending_baseline = pending_baseline, []
            verdicts = self.judge(samples + baseline)
            if baseline:
                self.baseline = sum(verdicts[len(samples):]) / len(baseline)
            return verdicts[: len(samples)]

        if self.grade_all:
            verdicts = judge_with_baseline(texts)  # one grader call per round
            return [sum(verdicts[j * per:(j + 1) * per]) / per for j in range(len(alphas))]

        def fraction(alpha: float) -> float:
            return sum(judge_with_baseline(by_alpha[alpha])) / per

        return fraction

    def set_unsteered(self, texts: list[str]) -> None:
        self.unsteered = texts
        if self.config.unsteered_reference and hasattr(self.grader, "set_reference"):
            self.grader.set_reference(texts)

    def ensure_unsteered(self) -> list[str]:
        """The unsteered final samples (generated now if no search batch carried them)."""
        if self.unsteered is None:
            self.set_unsteered(self.generate_rows(*self.unsteered_rows()).texts)
            baseline = self.judge(self.unsteered[: len(self.search)])
            self.baseline = sum(baseline) / len(baseline) if baseline else None
        return self.unsteered

    def judge(self, texts: list[str]) -> list[bool]:
        start = time.perf_counter()
        verdicts = [bool(v) for v in self.grader.coherent(texts)] if texts else []
        self.grade_seconds += time.perf_counter() - start
        if len(verdicts) != len(texts):
            raise ValueError(f"grader returned {len(verdicts)} verdicts for {len(texts)} samples")
        return verdicts

    @property
    def reference(self) -> str:
        """What the grader compared samples with, for the record."""
        if self.config.unsteered_reference and hasattr(self.grader, "set_reference"):
            return f"the {len(self.unsteered or [])} unsteered samples"
        return "the grader's own"

    def generate_rows(self, prompts: list[str], steers: list[Steer | None], keys: list[int]) -> Any:
        gens = generate(self.pair, prompts, self.config.sampling, steers, keys,
                        batch_size=self.config.batch_size)
        self.generated_tokens += gens.total_new_tokens
        self.token_slots += gens.token_slots
        self.generate_seconds += gens.seconds
        return gens


def search_strength(
    pair: ModelPair, v: torch.Tensor, layer: int, grader: Any, prompts: Sequence[str],
    config: SteeringConfig, lookahead: int | None = None,
) -> tuple[SearchResult, CoherenceProbe]:
    """Run the bisection on rendered ``prompts``; ``lookahead=1`` for the sequential search."""
    probe = CoherenceProbe(pair, v, layer, grader, prompts, config)
    result = bisect(probe, config.alpha_max, config.steps, config.coherent_fraction,
                    config.lookahead if lookahead is None else lookahead)
    return result, probe


def final_samples(
    pair: ModelPair, v: torch.Tensor, layer: int, result: SearchResult, probe: CoherenceProbe,
) -> dict[str, Any]:
    """Steered and unsteered samples on the final prompts, the steered ones confirmed coherent.

    Steered samples are drawn at the search's strength and graded; while under
    ``coherent_fraction`` of them pass, the strength backs off (:func:`next_lower`) and they are
    drawn again, at most ``config.max_backoffs`` times (see the module docstring).  No steered
    samples when the search found nothing.  Row ``i`` of both sets uses random stream ``i``:
    steered and unsteered samples of a prompt differ by the steering only.  The unsteered ones
    were usually generated with the first search batch.
    """
    unsteered = probe.ensure_unsteered()
    config, alpha = probe.config, result.alpha
    steered: list[str] = []
    confirmations: list[dict[str, float]] = []
    seconds, tokens = 0.0, 0
    prompts, _, keys = probe.unsteered_rows()
    while alpha is not None:
        gens = probe.generate_rows(prompts, [Steer(v, layer, alpha)] * len(prompts), keys)
        steered = gens.texts
        seconds, tokens = seconds + gens.seconds, tokens + gens.total_new_tokens
        fraction = sum(probe.judge(steered)) / len(steered)
        confirmations.append({"alpha": alpha, "coherent_fraction": fraction})
        if fraction >= config.coherent_fraction or len(confirmations) > config.max_backoffs:
            break
        alpha = next_lower(result.decisions, alpha)
    return {"alpha": alpha, "steered": steered, "unsteered": unsteered,
            "confirmed": bool(confirmations)
            and confirmations[-1]["coherent_fraction"] >= config.coherent_fraction,
            "confirmations": confirmations,
            "steered_tokens": tokens, "steered_seconds": round(seconds, 3)}


def base_samples(pair: ModelPair, v: torch.Tensor, layer: int, alpha: float,
                 probe: CoherenceProbe) -> dict[str, Any]:
    """The base model's samples on the final prompts, unsteered and steered with the same ``v``
    at the same ``alpha`` (same random streams as the finetuned rows).

    Why: a finetuned model that already talks about its domain unprompted leaves its own steered
    and unsteered samples equally close to the finetune documents, so the finetuned comparison
    saturates.  Steered base vs unsteered base asks whether the difference *alone* carries the
    domain.  One generate call of 2 × prompts rows on the base side (adapter disabled).
    """
    prompts, _, keys = probe.unsteered_rows()
    n = len(prompts)
    gens = generate(pair, prompts + prompts, probe.config.sampling,
                    [None] * n + [Steer(v, layer, alpha)] * n, keys + keys,
                    batch_size=probe.config.batch_size, side=BASE)
    return {"base_unsteered": gens.texts[:n], "base_steered": gens.texts[n:],
            "base_tokens": gens.total_new_tokens, "base_seconds": round(gens.seconds, 3)}


def steer_along(
    pair: ModelPair, vector: torch.Tensor, layer: int, norm_ft: float, grader: Any,
    prompts: Sequence[str], config: SteeringConfig | None = None, name: str = "δ̄",
) -> dict[str, Any]:
    """Find the largest coherent strength for steering along ``vector`` and sample with it.

    Args:
        vector: raw direction ``(d,)``; rescaled to ``v = vector/‖vector‖ · norm_ft``.
        norm_ft: ν_ft at ``layer``; strengths are multiples of it.
        grader: anything with ``coherent(list[str]) -> list[bool]`` (``set_reference`` is used
            when present and ``config.unsteered_reference``).
        prompts: neutral user messages (plain text; rendered with the chat template here).
        name: what the vector is called in a "zero vector" reason.
    Returns:
        The JSON-able dict documented at ADL's ``steering_stage`` (``found``, ``alpha``,
        ``search``, ``samples``, ...); a zero ``vector`` gives ``found: false`` and a reason.
    """
    config = config or SteeringConfig()
    if not prompts:
        raise ValueError("steering needs at least one prompt")
    rendered = [chat_prompt(pair.tokenizer, p) for p in prompts]
    base = {"layer": layer, "norm_ft": float(norm_ft), "vector_norm": float(vector.norm()),
            "config": config.to_dict()}
    if float(vector.norm()) == 0.0:
        return {**base, "found": False, "alpha": None,
                "reason": f"{name} is zero at this layer (the models do not differ)"}
    start = time.perf_counter()
    v = unit_scaled(vector, norm_ft)
    result, probe = search_strength(pair, v, layer, grader, rendered, config)
    search_seconds = (probe.generate_seconds, probe.grade_seconds)
    samples = final_samples(pair, v, layer, result, probe)
    if config.base_samples and samples["alpha"] is not None and samples["steered"]:
        samples.update(base_samples(pair, v, layer, samples["alpha"], probe))
    describe = getattr(grader, "describe", None)
    return {
        **base,
        "found": result.found,
        "alpha": samples["alpha"],
        "search_alpha": result.alpha,
        "reason": result.reason,
        "baseline_coherent_fraction": probe.baseline,
        "coherence_reference": probe.reference,
        "search": {**result.to_dict(), "lookahead": config.lookahead,
                   "generate_seconds": round(search_seconds[0], 3),
                   "grade_seconds": round(search_seconds[1], 3), "batches": probe.log},
        "samples": {"prompts": list(prompts[: config.final_prompts]), **samples,
                    "sampling": config.sampling.to_dict()},
        "generated_tokens": probe.generated_tokens,
        "token_slots": probe.token_slots,
        "seconds": round(time.perf_counter() - start, 3),
        "grader": describe() if callable(describe) else {"backend": type(grader).__name__},
    }

