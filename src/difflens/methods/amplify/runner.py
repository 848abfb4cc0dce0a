"""The amplification runner: stages over a run directory, each reused when already finished.

generate-a<α> (one stage per strength: amplified samples on neutral chat prompts) → grade (rate
of the finetune's domain and coherence per α, bootstrap intervals) → search (largest coherent α
by the bisection of ADL's steering search, :func:`difflens.models.steering.bisect`) → summary.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from difflens.data.chat import chat_prompt
from difflens.data.corpus import chat_prompts, load_texts
from difflens.io.artifacts import RunDir, config_hash, read_json, write_json
from difflens.methods.amplify.config import AmplifyConfig, resolve_defaults
from difflens.methods.amplify.grade import EmbeddingRate, LLMRate, grade_alpha
from difflens.methods.amplify.result import (
    GRADES_FILE,
    SEARCH_FILE,
    AmplifyResult,
    generate_stage,
    samples_file,
)
from difflens.models.amplify import amplified_rows, generate_amplified, shared_vocab_note
from difflens.models.device import is_gpu
from difflens.models.loading import LoadOptions
from difflens.models.pair import ModelPair

__all__ = ["AmplifyConfig", "AmplifyResult", "default_run_dir", "run_amplify"]

#: Reference texts the offline rate threshold is taken from (the shipped general corpus).
REFERENCE_TEXTS = 256


def default_run_dir(config: AmplifyConfig) -> Path:
    return Path("runs") / f"amplify-{config_hash(config.identity())}"


def finetune_documents(pair: ModelPair, config: AmplifyConfig) -> list[str] | None:
    """``--ft-docs``, else the organism's ``documents.jsonl``, else None."""
    if config.ft_docs:
        return load_texts(config.ft_docs)
    if pair.organism_dir and (Path(pair.organism_dir) / "documents.jsonl").exists():
        return load_texts(Path(pair.organism_dir) / "documents.jsonl")
    return None


def make_graders(pair: ModelPair, config: AmplifyConfig, description: str | None,
                 ft_texts: list[str] | None) -> tuple[Any, Any]:
    """``(coherence grader, rate rule)``: the LLM for both when an endpoint is configured and
    a description is known, else the offline grader (base-model perplexity) and the embedding
    rate against the finetune documents (or the description)."""
    from difflens.graders import make_grader
    from difflens.llm import llm_config_from_fields

    llm = llm_config_from_fields(config.to_dict())
    if llm is not None:
        grader = make_grader(llm, check_reachable=True)
        if description:
            return grader, LLMRate(grader, description)
    else:
        from difflens.models.perplexity import base_perplexity

        grader = make_grader(None, perplexity=base_perplexity(pair))
    return grader, embedding_rate(config, description, ft_texts)


def embedding_rate(config: AmplifyConfig, description: str | None,
                   ft_texts: list[str] | None, embedder: Any = None) -> EmbeddingRate | None:
    """The offline rate rule; None without documents and description (no rate is measured)."""
    docs = ft_texts or ([description] if description else None)
    if not docs:
        return None
    return EmbeddingRate(docs, load_texts("reference", limit=REFERENCE_TEXTS), config.quantile,
                         embedder)


def run_amplify(config: AmplifyConfig, out: Path | None = None, pair: ModelPair | None = None,
                progress: bool = True, grader: Any = None, rate: Any = None) -> dict[str, Any]:
    """Run (or resume) amplification; returns :class:`AmplifyResult` as a dict.

    ``grader`` (anything with ``coherent``) and ``rate`` (an :class:`EmbeddingRate` or
    :class:`LLMRate`) default to :func:`make_graders`.
    """
    config.validate()
    if pair is None:
        pair = ModelPair.load(config.base, config.finetuned,
                              LoadOptions(dtype=config.dtype, device=config.device))
    vocab, note = shared_vocab_note(pair)  # a bad pair fails before anything is written
    batch_size = resolve_defaults(config, is_gpu(pair.device)).batch_size
    description = config.description or pair.description
    ft_texts = finetune_documents(pair, config)
    if grader is None or rate is None:
        made = make_graders(pair, config, description, ft_texts)
        grader, rate = grader or made[0], rate or made[1]
    notes = [note] if note else []
    if rate is None:
        notes.append("no finetune documents or description (--ft-docs / --description): the "
                     "rate of the finetune's domain was not measured, only coherence")
    run = RunDir(out or default_run_dir(config), config.identity(), kind="amplify")
    sampling = config.sampling()
    texts = chat_prompts()[: config.prompts]
    rendered = [chat_prompt(pair.tokenizer, p) for p in texts]
    alphas = [float(a) for a in dict.fromkeys(config.alphas)]  # order kept, duplicates dropped
    timings: dict[str, float] = {}

    def sample(alpha: float) -> dict[str, Any]:
        rows, strengths, keys = amplified_rows(rendered, [alpha], config.samples_per_prompt)
        gens = generate_amplified(pair, rows, strengths, sampling, keys, batch_size, progress)
        return {"alpha": alpha, "prompts": texts, "samples_per_prompt": config.samples_per_prompt,
                "keys": keys, "texts": gens.texts, "new_tokens": gens.new_tokens,
                "tokens": gens.total_new_tokens, "seconds": round(gens.seconds, 3),
                "sampling": sampling.to_dict()}

    samples: dict[float, dict[str, Any]] = {}
    for alpha in alphas:
        path = run.path / samples_file(alpha)
        samples[alpha] = run.stage(generate_stage(alpha), lambda a=alpha: sample(a),
                                   lambda v, p=path: write_json(p, v), lambda p=path: read_json(p))
    if 0.0 in samples and hasattr(grader, "set_reference"):
        grader.set_reference(samples[0.0]["texts"])  # coherence relative to the plain finetune
    elif hasattr(grader, "set_reference"):
        notes.append("α = 0 was not sampled: coherence is judged against the grader's default "
                     "reference texts, not the plain finetune's samples")

    def grade() -> dict[str, Any]:
        start = time.perf_counter()
        out = {str(a): grade_alpha(samples[a]["texts"], rate, grader, config.n_boot, config.seed)
               for a in alphas}
        return {"per_alpha": out, "rate_rule": rate.describe() if rate else {},
                "seconds": round(time.perf_counter() - start, 3)}

    grades = run.stage("grade", grade, lambda v: write_json(run.path / GRADES_FILE, v),
                       lambda: read_json(run.path / GRADES_FILE))
    timings["grade"] = grades.get("seconds", 0.0)
    search = None
    if config.search:
        search = run.stage("search", lambda: coherent_search(
            pair, rendered[: config.search_prompts], grader, config, batch_size, progress),
            lambda v: write_json(run.path / SEARCH_FILE, v),
            lambda: read_json(run.path / SEARCH_FILE))
        timings["search"] = search.get("seconds", 0.0)
    per_alpha = []
    for alpha in alphas:
        g = grades["per_alpha"][str(alpha)]
        row = {"alpha": alpha, "rate": g["rate"], "coherence": g["coherence"],
               "tokens": samples[alpha]["tokens"], "seconds": samples[alpha]["seconds"]}
        if "score" in g:
            row["score"] = g["score"]
        per_alpha.append(row)
        timings[generate_stage(alpha)] = samples[alpha]["seconds"]
    describe = getattr(grader, "describe", None)
    result = AmplifyResult(
        run_dir=str(run.path), base=pair.base_id, finetuned=pair.ft_id, alphas=alphas,
        per_alpha=per_alpha, rate_rule=grades["rate_rule"],
        coherence_grader=describe() if callable(describe) else {"backend": type(grader).__name__},
        baseline_rate=(grades["per_alpha"]["0.0"]["rate"] or {}).get("mean")
        if 0.0 in samples else None,
        largest_coherent_alpha=(search or {}).get("alpha"), search=search, vocab=vocab,
        notes=notes, description=description,
        generated_tokens=sum(s["tokens"] for s in samples.values())
        + int((search or {}).get("generated_tokens", 0)), seconds=timings)
    result.save(run.path)
    return result.to_dict()


def coherent_search(pair: ModelPair, prompts: list[str], grader: Any, config: AmplifyConfig,
                    batch_size: int, progress: bool = True) -> dict[str, Any]:
    """The largest α whose samples stay coherent: ADL's batched look-ahead bisection of
    ``[0, alpha_max]`` (one sample per search prompt and strength, common random numbers
    across strengths; every strength of a round is generated in one batch and graded)."""
    from difflens.models.steering import bisect

    start = time.perf_counter()
    sampling = config.sampling()
    log: list[dict[str, Any]] = []

    def evaluate(points: list[float]) -> list[float]:
        rows, strengths, keys = amplified_rows(prompts, points)
        gens = generate_amplified(pair, rows, strengths, sampling, keys, batch_size, progress)
        verdicts = [bool(v) for v in grader.coherent(gens.texts)]
        per = len(prompts)
        fractions = [sum(verdicts[j * per:(j + 1) * per]) / per for j in range(len(points))]
        log.append({"alphas": list(points), "coherent_fractions": fractions,
                    "tokens": gens.total_new_tokens, "seconds": round(gens.seconds, 3),
                    "samples": {str(a): gens.texts[j * per:(j + 1) * per]
                                for j, a in enumerate(points)}})
        return fractions

    steps = max(1, math.ceil(math.log2(config.alpha_max / config.tolerance)))
    result = bisect(evaluate, config.alpha_max, steps, config.coherent_fraction, config.lookahead)
    return {**result.to_dict(), "alpha_max": config.alpha_max, "tolerance": config.tolerance,
            "coherent_fraction": config.coherent_fraction, "search_prompts": len(prompts),
            "batches": log, "generated_tokens": sum(b["tokens"] for b in log),
            "seconds": round(time.perf_counter() - start, 3)}
