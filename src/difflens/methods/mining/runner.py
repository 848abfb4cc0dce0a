"""The Diff Mining runner: stages over a run directory, each reused when already finished.

extract (Δ streamed into counts) → orderings → nmf → examples → summary; relevance when a
grader is given.  Only the first stage runs the models; the others re-read ``counts.safetensors``.
"""

from __future__ import annotations

import logging
import time
from functools import partial
from pathlib import Path
from typing import Any

from difflens import distributed as dd
from difflens.data.corpus import load_texts
from difflens.errors import DifflensError
from difflens.io.artifacts import RunDir, config_hash, read_json, timed_stage, write_json
from difflens.methods.mining.aggregate import MiningCounts, merge_ranks
from difflens.methods.mining.config import MiningConfig, resolve_defaults
from difflens.methods.mining.examples import example_contexts
from difflens.methods.mining.extract import (
    check_top_k,
    delta_batches,
    lens_layer,
    shared_vocab,
    special_ids,
    tokenize_padded,
    valid_positions,
)
from difflens.methods.mining.orderings import orderings
from difflens.methods.mining.relevance import relevance
from difflens.methods.mining.result import (
    EXAMPLES_FILE,
    NMF_FILE,
    ORDERINGS_FILE,
    RELEVANCE_FILE,
    CorpusCounts,
    MiningResult,
)
from difflens.models.device import is_gpu
from difflens.models.loading import LoadOptions
from difflens.models.pair import ModelPair

__all__ = ["MiningConfig", "MiningResult", "default_run_dir", "run_mining"]

log = logging.getLogger(__name__)
SUMMARY_ROWS = 100  # rows of the Top-K occurrence lists copied into summary.json
RELEVANCE_TOKENS = 20  # top promoted tokens graded for relevance (the seeds' top-20 score)
EXAMPLE_TOKENS = 20  # top promoted tokens that get example contexts


def default_run_dir(config: MiningConfig) -> Path:
    return Path("runs") / f"mining-{config_hash(config.to_dict())}"


def extract_counts(pair: ModelPair, config: MiningConfig, texts: list[str], vocab: int,
                   layer: int, batch_size: int, progress: bool = True
                   ) -> CorpusCounts | None:
    """Stream Δ over ``texts`` into :class:`MiningCounts` (the only stage that runs models).

    Under torchrun every rank tokenises the whole corpus (same padding width, same global
    position ids), streams its contiguous share of the rows, and the counts are merged on rank
    0 (:func:`~difflens.methods.mining.aggregate.merge_ranks`); the other ranks get None.
    """
    from difflens import distributed as dd

    start = time.perf_counter()
    ids, attention = tokenize_padded(pair.tokenizer, texts, config.max_tokens)
    valid = valid_positions(ids, attention, pair.tokenizer, config.mask_bos, config.mask_special)
    counts = MiningCounts(vocab, config.top_k, config.nmf_positions)
    if not bool(valid.any()):
        counts.finalize()  # raises the one-line "no valid positions" error before any forward
    lo, hi = dd.shard_range(ids.shape[0])
    offset = lo * ids.shape[1]  # global position id of this shard's first position

    def local() -> None:
        for i, batch in enumerate(delta_batches(pair, ids[lo:hi], valid[lo:hi],
                                                attention[lo:hi], layer, vocab, batch_size,
                                                progress and dd.is_main())):
            counts.update(batch.delta, batch.valid, batch.position_ids + offset)
            del batch  # free this Δ block before the next one is computed
            if i == 0:
                dd.fault_point()

    dd.run_shard("logit differences", local)
    whole = merge_ranks(counts)
    if whole is None:
        return None
    return CorpusCounts(whole.finalize(), ids, attention, layer, time.perf_counter() - start)


def run_mining(config: MiningConfig, out: Path | None = None, pair: ModelPair | None = None,
               progress: bool = True, grader: Any = None, description: str | None = None
               ) -> dict[str, Any]:
    """Run (or resume) Diff Mining; returns :class:`MiningResult` as a dict.

    ``grader`` (optional, anything with ``token_relevance``) grades the top 20 promoted tokens
    against ``description`` (default: the organism card's description, when the pair has one).
    """
    config.validate()
    if pair is None:
        pair = ModelPair.load(config.base, config.finetuned,
                              LoadOptions(dtype=config.dtype, device=config.device))
    vocab = shared_vocab(pair)
    check_top_k(config.top_k, vocab)
    layer = lens_layer(pair, config.lens, config.layer)
    sizes = resolve_defaults(config, is_gpu(pair.device))  # device-dependent, decided once
    n_texts, batch_size = sizes.n_texts, sizes.batch_size
    tok = pair.tokenizer
    if not dd.is_main():  # torchrun rank > 0: its share of the extraction, nothing written
        if not dd.from_main(None):
            texts = load_texts(config.corpus, limit=n_texts, tokenizer=tok)
            extract_counts(pair, config, texts, vocab, layer, batch_size, progress)
        raise dd.WorkerDone()
    run = RunDir(out or default_run_dir(config), config.to_dict(), kind="mining")
    specials = set(special_ids(tok))
    timings: dict[str, float] = {}

    timed = partial(timed_stage, timings)  # records each computed stage's seconds

    def compute_counts() -> CorpusCounts:
        texts = load_texts(config.corpus, limit=n_texts, tokenizer=tok)
        return extract_counts(pair, config, texts, vocab, layer, batch_size, progress)

    dd.from_main(run.is_done("extract"))  # the other ranks extract only when rank 0 does
    corpus = run.stage("extract", compute_counts, lambda c: c.save(run.path),
                       lambda: CorpusCounts.load(run.path))
    dd.end_collectives()  # the rest is rank 0's alone
    counts = corpus.counts
    timings["extract"] = round(corpus.seconds, 3)
    order = run.stage(
        "orderings",
        timed("orderings", lambda: orderings(counts, tok, config.top, config.normalize,
                                             specials)),
        lambda v: write_json(run.path / ORDERINGS_FILE, v),
        lambda: read_json(run.path / ORDERINGS_FILE))
    topics = None
    if config.topics > 0:
        topics = run.stage("nmf", timed("nmf", lambda: _topics(counts, tok, config)),
                           lambda v: write_json(run.path / NMF_FILE, v),
                           lambda: read_json(run.path / NMF_FILE))
    promoted = order["promoted"]["topk_occurrence"]
    groups = [(row["token"], row["ids"]) for row in promoted[:EXAMPLE_TOKENS]]
    examples = run.stage(
        "examples",
        timed("examples", lambda: example_contexts(counts, groups, corpus.ids, corpus.attention,
                                                   tok, config.n_examples)),
        lambda v: write_json(run.path / EXAMPLES_FILE, v),
        lambda: read_json(run.path / EXAMPLES_FILE))
    result = MiningResult(
        run_dir=str(run.path), base=pair.base_id, finetuned=pair.ft_id, lens=config.lens,
        layer=corpus.layer, n_texts=int(corpus.ids.shape[0]), n_positions=counts.n_positions,
        vocab=counts.vocab, top_k=counts.top_k, no_difference=counts.no_difference,
        max_abs_delta=counts.max_abs_delta, promoted=promoted[:SUMMARY_ROWS],
        suppressed=order["suppressed"]["topk_occurrence"][:SUMMARY_ROWS], topics=topics,
        examples=examples, seconds=timings)
    description = description or pair.description
    if grader is not None and description:
        tokens = [row["token"].strip() or row["token"] for row in promoted[:RELEVANCE_TOKENS]]
        result.relevance = relevance(tokens, description, grader).to_dict()
        write_json(run.path / RELEVANCE_FILE, result.relevance)
    elif grader is not None:
        log.warning("token relevance skipped: no description of the finetune was given")
    result.save(run.path)
    return result.to_dict()


def _topics(counts: MiningCounts, tokenizer: Any, config: MiningConfig) -> dict[str, Any]:
    from difflens.methods.mining.nmf import mine_topics

    if counts.no_difference:
        return {"skipped": "no promoted entries to factor (the models do not differ)"}
    try:
        return mine_topics(counts.sample_idx, counts.sample_val, tokenizer, config.topics,
                           binary=config.nmf_values == "binary",
                           orthogonal=config.nmf_orthogonal, seed=config.seed)
    except DifflensError as exc:  # scikit-learn missing: the orderings still stand
        log.warning("NMF skipped: %s", exc)
        return {"skipped": str(exc)}
