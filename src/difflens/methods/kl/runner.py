"""The per-token KL runner: stages over a run directory, each reused when already finished.

layer (the readout layer by ADL's rule, unless --layers) → pass (both models over the corpus:
KL, norms, fingerprint) → summary.  Only ``layer`` and ``pass`` run the models.

Under torchrun (:mod:`difflens.distributed`) both model stages are sharded by rows: every rank
tokenises the same corpus, the readout-layer pass merges its moments on every rank, the KL
pass's :class:`KLStats` (sums, histograms, per-text values, top-context stores) are merged on
rank 0 in rank order; rank 0 alone writes, the other ranks exit 0 after the pass.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from difflens.data.corpus import load_texts
from difflens.errors import DifflensError
from difflens.io.artifacts import RunDir, config_hash
from difflens.methods.kl.aggregate import EDGES, KLStats, norm_name
from difflens.methods.kl.config import KLConfig, resolve_defaults
from difflens.methods.kl.corpus_pass import kl_pass
from difflens.methods.kl.result import KLPass, KLResult
from difflens.methods.kl.tables import decoded_contexts, fingerprint_rows
from difflens.models.device import is_gpu
from difflens.models.loading import LoadOptions
from difflens.models.pair import ModelPair
from difflens.models.vocab import shared_vocab, tokenize_padded, valid_positions, vocab_note

__all__ = ["KLConfig", "KLResult", "default_run_dir", "run_kl"]


def default_run_dir(config: KLConfig) -> Path:
    return Path("runs") / f"kl-{config_hash(config.to_dict())}"


def check_layers(pair: ModelPair, layers: list[int | float]) -> list[int]:
    """``--layers`` resolved to sorted unique indices (one line for one out of range)."""
    return pair.resolve_layers(layers)


def run_kl(config: KLConfig, out: Path | None = None, pair: ModelPair | None = None,
           progress: bool = True) -> dict[str, Any]:
    """Run (or resume) the per-token KL; returns :class:`KLResult` as a dict.

    Everything that can be refused is checked before the run directory is written: the
    config, the vocabularies, ``--layers``, and that the tokenised corpus has a position that
    counts."""
    config.validate()
    if pair is None:
        pair = ModelPair.load(config.base, config.finetuned,
                              LoadOptions(dtype=config.dtype, device=config.device))
    vocab, note = shared_vocab(pair), vocab_note(pair)
    explicit = check_layers(pair, config.layers) if config.layers else None
    sizes = resolve_defaults(config, is_gpu(pair.device))  # device-dependent, decided once
    tok = pair.tokenizer
    texts = load_texts(config.corpus, limit=sizes.n_texts, tokenizer=tok)
    ids, attention = tokenize_padded(tok, texts, config.max_tokens)
    valid = valid_positions(ids, attention, tok, mask_bos=not config.keep_bos,
                            mask_special=config.mask_special)
    if not bool(valid.any()):
        excluded = ", ".join(["padding", *([] if config.keep_bos else ["BOS"]),
                              *(["special tokens"] if config.mask_special else [])])
        raise DifflensError(
            f"no valid positions: every position of the {len(texts)} texts is excluded "
            f"({excluded}); use longer texts or a larger --max-tokens"
            + ("" if config.keep_bos else ", or pass --keep-bos"))
    from difflens import distributed as dd
    from difflens.collect import choose_readout_layer

    def compute_pass() -> KLPass | None:
        # Under torchrun: each rank's contiguous rows, merged on rank 0 in rank (= text) order.
        start = time.perf_counter()
        stats = KLStats(config.max_tokens, layers, vocab if config.fingerprint else 0,
                        [config.divergence, *(norm_name(layer) for layer in layers)],
                        config.top_contexts, config.before, config.after)
        lo, hi = dd.shard_range(ids.shape[0])
        dd.run_shard("the KL pass", lambda: kl_pass(
            pair, ids[lo:hi], attention[lo:hi], valid[lo:hi], layers, vocab, stats,
            sizes.batch_size, config.fingerprint, progress and dd.is_main()))
        whole = dd.merged(stats, to_main=True)
        return None if whole is None else KLPass(whole, ids, valid, time.perf_counter() - start)

    if not dd.is_main():  # torchrun rank > 0: its shares of the passes, nothing written
        layer_done, pass_done = dd.from_main(None)
        if explicit is None and not layer_done:
            choose_readout_layer(pair, texts, k=config.readout_k, progress=False)
        layers = dd.from_main(None)
        if not pass_done:
            compute_pass()
        raise dd.WorkerDone()
    run = RunDir(out or default_run_dir(config), config.to_dict(), kind="kl")
    dd.from_main((run.is_done("layer"), run.is_done("pass")))
    choice = None
    if explicit is None:
        choice = run.stage(
            "layer", lambda: choose_readout_layer(pair, texts, k=config.readout_k,
                                                  progress=progress),
            lambda c: KLResult.write_layer(run.path, c), lambda: KLResult.read_layer(run.path))
        layers = sorted({choice.layer, pair.num_layers - 1})
    else:
        layers = explicit
    dd.from_main(layers)
    done = run.stage("pass", compute_pass, lambda p: KLResult.write_pass(run.path, p),
                     lambda: KLResult.read_pass(run.path))
    dd.end_collectives()  # the summary is rank 0's alone
    start = time.perf_counter()
    result = summarize(done, config, pair, run.path, layers, note, choice)
    result.seconds = {"pass": round(done.seconds, 3),
                      "summary": round(time.perf_counter() - start, 3)}
    result.save(run.path)
    return result.to_dict()


def summarize(done: KLPass, config: KLConfig, pair: ModelPair, run: Path, layers: list[int],
              note: str | None, choice: Any) -> KLResult:
    """The :class:`KLResult` of a finished pass."""
    stats = done.stats
    summary = stats.summary()
    no_difference = all(summary[name]["max"] == 0.0 for name in summary)
    fingerprint = fingerprint_rows(stats, pair.tokenizer, config.fingerprint_rows) \
        if config.fingerprint and not no_difference else None
    return KLResult(
        run_dir=str(run), base=pair.base_id, finetuned=pair.ft_id,
        divergence=config.divergence, corpus=str(config.corpus),
        n_texts=int(done.ids.shape[0]), n_positions=stats.n_positions,
        max_tokens=config.max_tokens, vocab=stats.vocab or shared_vocab(pair), layers=layers,
        no_difference=no_difference, stats=summary, per_position=stats.per_position(),
        histograms=stats.histograms(), hist_edges=list(EDGES),
        top_contexts=decoded_contexts(stats, pair.tokenizer), fingerprint=fingerprint,
        readout_layer=None if choice is None else choice.layer,
        layer_choice=None if choice is None else choice.to_dict(), vocab_note=note)
