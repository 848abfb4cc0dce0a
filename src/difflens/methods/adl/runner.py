"""The ADL runner: stages over a run directory, each reused when already finished.

collect → logit_lens → patchscope → steering → relevance → similarity → causal, then the
summary.  Each stage's result is a JSON (or safetensors) artifact; a finished stage is never
recomputed for the same configuration, so an interrupted run resumes where it stopped.  The
report (the last of :data:`STAGES`, skippable like the others) is rendered by the layer above
(:func:`difflens.api.run_adl`), not here.

Under torchrun (:mod:`difflens.distributed`) every rank streams its shard of the collection and
the statistics are merged exactly; rank 0 alone opens the :class:`RunDir` (the stage framework
stays single-writer: the other ranks never touch it, rank 0 tells them whether "collect" is
already finished), runs the later stages and writes everything; the other ranks exit 0
(:class:`~difflens.distributed.WorkerDone`) once the collection is merged.
"""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path
from typing import Any

from difflens import distributed as dd
from difflens.data.corpus import chat_prompts, load_texts
from difflens.errors import DifflensError
from difflens.io.artifacts import RunDir, config_hash, read_json, timed_stage, write_json
from difflens.methods.adl.collect_stage import DiffCollection, collect
from difflens.methods.adl.config import ADLConfig, resolve_defaults
from difflens.methods.adl.lens_stage import lens_readouts
from difflens.methods.adl.records import (
    LayerLens,
    Patchscope,
    Relevance,
    Steering,
    int_keys,
    lens_layers,
)
from difflens.methods.adl.result import ADLResult, ADLSummary, stage_file
from difflens.models.device import is_gpu
from difflens.models.loading import LoadOptions
from difflens.models.pair import ModelPair
from difflens.stats.layer_choice import LayerChoice, choose_layer, user_layer

log = logging.getLogger(__name__)

STAGES = ("patchscope", "steering", "relevance", "similarity", "causal", "report")


def default_run_dir(config: ADLConfig) -> Path:
    return Path("runs") / f"adl-{config_hash(config.identity())}"


def readout_layer(pair: ModelPair, config: ADLConfig,
                  lens: dict[str, Any] | None = None) -> LayerChoice:
    """``--layer`` when given, else the layer chosen from the run's relative differences.

    ``lens`` is the logit-lens stage's output (its ``relative_norm`` per layer is the rule's
    only input); without it only a user-set layer can be resolved.
    """
    n_layers = pair.num_layers
    rel = {lay: float(v["relative_norm"])
           for lay, v in int_keys((lens or {}).get("layers", {})).items()}
    if config.layer is not None:
        return user_layer(pair.arch("ft").resolve_layer(config.layer), n_layers, rel)
    if not rel:
        raise ValueError("the readout layer is chosen from the logit-lens stage's output")
    return choose_layer(rel, n_layers)


def make_adl_grader(pair: ModelPair, config: ADLConfig) -> Any:
    """LLM grader when an endpoint is configured (probed now: fails fast), else offline."""
    from difflens.graders import make_grader
    from difflens.llm import llm_config_from_fields

    llm = llm_config_from_fields(config.to_dict())
    if llm is not None:
        return make_grader(llm, check_reachable=True)
    from difflens.models.perplexity import base_perplexity

    return make_grader(None, perplexity=base_perplexity(pair))


def finetune_documents(pair: ModelPair, config: ADLConfig) -> list[str] | None:
    """The finetune's documents: ``--ft-docs``, else the organism's ``documents.jsonl``."""
    if config.ft_docs:
        return load_texts(config.ft_docs)
    if pair.organism_dir and (Path(pair.organism_dir) / "documents.jsonl").exists():
        return load_texts(Path(pair.organism_dir) / "documents.jsonl")
    return None


def run_adl(config: ADLConfig, out: Path | None = None, pair: ModelPair | None = None,
            progress: bool = True) -> dict[str, Any]:
    """Run (or resume) ADL and return its summary; artifacts land in ``out``."""
    unknown = set(config.skip) - set(STAGES)
    if unknown:
        raise DifflensError(f"unknown stage(s) to skip: {', '.join(sorted(unknown))}; "
                            f"choose from {', '.join(STAGES)}")
    config.validate()  # every flag's range, choice and path before any model loads
    if pair is None:
        pair = ModelPair.load(config.base, config.finetuned,
                              LoadOptions(dtype=config.dtype, device=config.device))
    if config.layer is not None:
        readout_layer(pair, config)  # a bad --layer fails before any work
    pair.resolve_layers(list(config.layers))  # the same for --layers
    # Under torchrun only rank 0 grades (every stage after the collection is rank 0's).
    grader = make_adl_grader(pair, config) \
        if dd.is_main() and set(STAGES[:3]) - set(config.skip) else None
    gpu = is_gpu(pair.device)
    sizes = resolve_defaults(config, gpu)  # device-dependent defaults, decided in one place
    # The inputs are read before the run directory records this config: a bad corpus or
    # document file leaves nothing that would block the corrected rerun.
    reference = load_texts(config.corpus, limit=sizes.n_texts)
    ft_texts = finetune_documents(pair, config)
    # Every layer is read in the one collection pass: the readout layer is chosen from them
    # (layer_choice.py), and the report shows them all.  Going to full depth instead of the
    # old 0.75 costs the forward of the last layers only (README, "Readout layer").
    sweep = list(range(pair.num_layers))
    if not dd.is_main():  # torchrun rank > 0: its share of the collection, nothing written
        if not dd.from_main(None):
            collect(pair, reference, sweep, config.k, config.batch_size, progress)
        raise dd.WorkerDone()
    run = RunDir(out or default_run_dir(config), config.identity(), kind="adl")
    timings: dict[str, float] = dict(run.finished().get("_timings", {}).get("seconds", {}))

    timed = partial(timed_stage, timings)  # records each computed stage's seconds

    def json_stage(name: str, compute: Any) -> Any:
        if name in config.skip:
            return None
        path = run.path / stage_file(name)
        return run.stage(name, timed(name, compute), lambda v: write_json(path, v),
                         lambda: read_json(path))

    dd.from_main(run.is_done("collect"))  # the other ranks collect only when rank 0 does
    diff = run.stage("collect", timed("collect", lambda: collect(
        pair, reference, sweep, config.k, config.batch_size, progress)),
        lambda d: d.save(run.path), lambda: DiffCollection.load(run.path))
    dd.end_collectives()  # the rest is rank 0's alone (the others have left), unsharded
    lens = json_stage("logit_lens", lambda: lens_readouts(pair, diff, config.top))
    choice = readout_layer(pair, config, lens)
    layer = choice.layer
    layers = lens_layers(lens)
    info = layers[layer]
    vector, norm_ft = diff.vector(layer), diff.norms["ft"][layer]
    notes: list[str] = _overlap_notes(pair, reference)
    if info.no_difference:
        notes.append(f"No difference between the models at layer {layer} (‖δ̄‖/ν_ft = "
                     f"{info.relative_norm:.2e}); later stages are skipped.")
        config = ADLConfig(**{**config.to_dict(), "skip": list(STAGES[:-1])})

    from difflens.methods.adl.patchscope import patchscope_stage
    from difflens.methods.adl.steering import steering_stage
    from difflens.models.steering import SteeringConfig

    patch = _record(Patchscope, json_stage("patchscope", lambda: patchscope_stage(
        pair, vector, layer, norm_ft, grader, top=config.top)))
    # Generation through a 262k-token head dominates ADL on CPU: 32 new tokens (~25 words) are
    # enough to judge coherence and to embed; GPUs get 64.
    new_tokens = sizes.max_new_tokens
    # The search judges each strength on 8 prompts: with 4, one sample moves the coherent share
    # by 25 points and a strength whose samples half-degenerate ("cake cake cake ...") passed
    # at exactly 3/4 on some organisms.  On CPU it stops at a 0.125 ν_ft bracket (4 decisions),
    # on GPU at 0.05 (6).  Look-ahead by the cost of a speculative row (benchmarks/
    # steering_search.py): a CPU decode step costs ~0.17 s fixed + ~10 ms per row, so 2 decisions
    # per round (24 rows) is the best trade there; on a GPU rows are nearly free at these batch
    # sizes, so 3 decisions per round (56 rows) take 6 decisions in 2 rounds.  Final samples:
    # 20 prompts either way, confirmed coherent (see steering.py).
    steering_config = SteeringConfig(final_prompts=config.final_prompts, search_prompts=8,
                                     tolerance=0.05 if gpu else 0.125,
                                     lookahead=3 if gpu else 2)
    steering_config = steering_config.replace(
        sampling=steering_config.sampling.replace(max_new_tokens=new_tokens, seed=config.seed))
    steer = _record(Steering, json_stage("steering", lambda: steering_stage(
        pair, vector, layer, norm_ft, grader, chat_prompts(), steering_config)))

    description = config.description or pair.description
    relevance = _record(Relevance, json_stage("relevance", lambda: _relevance(
        info, patch, description, grader, ft_texts, reference)))
    samples = steer.samples if steer is not None else None
    if not ft_texts:
        notes.append("No finetune documents (no organism documents and no --ft-docs): steering "
                     "similarity and the causal test on finetune data were skipped.")
    elif samples is None or not samples.steered:
        notes.append("No steered samples (steering skipped or no coherent strength): steering "
                     "similarity was skipped.")
    else:
        if samples.confirmed is False:
            last = samples.confirmations[-1]
            notes.append(f"Steered samples stayed below the coherence threshold after backing "
                         f"off to α = {last.alpha:.4g} ({last.coherent_fraction:.0%} "
                         "coherent): steering similarity partly measures degenerate text.")
        from difflens.methods.adl.similarity import similarity_stage

        json_stage("similarity", lambda: similarity_stage(
            samples.steered, samples.unsteered, ft_texts, reference[:500],
            seed=config.seed, base_steered=samples.base_steered,
            base_unsteered=samples.base_unsteered, description=description))
    if ft_texts:
        from difflens.methods.adl.causal import causal_stage

        # Every direction needs its own full forward with the LM head (33 per batch): on CPU
        # the test is kept to 16 texts × 32 tokens per dataset (~1,000 predicted tokens, enough
        # to separate δ̄ from unit random directions), on GPU 128 × 64.
        json_stage("causal", lambda: causal_stage(
            pair, vector, layer, ft_texts, reference, n_random=config.n_random,
            n_texts=sizes.causal_texts, max_tokens=sizes.causal_tokens,
            seed=config.seed, progress=progress))
    run.mark_done("_timings", {"seconds": timings})
    # Similarity and causal as finished in this directory (also by an earlier run that did
    # not skip them).
    stored = ADLResult(run.path)
    summary = ADLSummary.build(
        run_dir=run.path, base=pair.base_id, finetuned=pair.ft_id, description=description,
        choice=choice, n_texts=diff.stats.count, k=config.k, notes=notes, timings=timings,
        lens=layers, patchscope=patch, steering=steer, relevance=relevance,
        similarity=stored.similarity if run.is_done("similarity") else None,
        causal=stored.causal if run.is_done("causal") else None)
    summary.save(run.path)
    return summary.to_dict()


def _record(kind: Any, data: dict[str, Any] | None) -> Any:
    """A stage's output as its typed record (None when the stage was skipped)."""
    return None if data is None else kind.from_dict(data)


def _overlap_notes(pair: ModelPair, reference: list[str]) -> list[str]:
    """A note when the organism was trained on some of the reference texts (mixed in)."""
    from difflens.organisms.documents import mixed_in_texts

    trained = mixed_in_texts(pair.organism_dir)
    overlap = sum(t in trained for t in reference)
    if not overlap:
        return []
    return [f"{overlap} of the {len(reference)} reference texts were mixed into this organism's "
            "training data: δ̄ partly reads memorised text; `difflens eval` uses a held-out "
            "copy of the corpus, or pass --corpus with other text."]


def _relevance(info: LayerLens, patch: Patchscope | None, description: str | None,
               grader: Any, ft_texts: list[str] | None, reference: list[str]) -> dict[str, Any]:
    from difflens.methods.adl.relevance import relevance_stage

    readouts = {
        "logit lens δ̄": (info.mean.tokens, info.mean.probs),
        "logit lens base mean": (info.base_mean.tokens, info.base_mean.probs),
        "logit lens ft mean": (info.ft_mean.tokens, info.ft_mean.probs),
    }
    chosen = patch.chosen if patch is not None else None
    if chosen is not None and chosen.tokens:
        readouts["patchscope"] = (chosen.tokens, chosen.probs)
    return relevance_stage(readouts, description, grader, ft_texts, reference)

