"""Per-token KL on the embedded pair: the KL pass against its floor and against the naive way.

Every mode runs in a fresh process (so its peak RSS is its own) over the same tokens
(``--texts`` texts × ``--max-tokens`` tokens of the shipped reference corpus, batch
``--batch-size``), after one warm-up batch, and prints seconds, positions/s and VmHWM:

* ``floor``: two plain forwards *with the LM head* (``model(...).logits``) over the same
  tokens, nothing else — what any per-token comparison of the two distributions must pay;
* ``kl``: the pass as ``difflens kl`` runs it (tiled single sweep for the KL, second sweep for
  the exact fingerprint, norms at two layers, streaming statistics and top stores);
* ``kl-nofp``: the same with ``--no-fingerprint`` (one sweep);
* ``kl-chunked``: the generic path (``arch.logits`` on chunks of positions, whole vocabulary
  per chunk, fingerprint included in one matmul) forced on the plain head;
* ``naive``: full logits of both models per batch, ``log_softmax`` and
  ``torch.nn.functional.kl_div``, fingerprint by a sum over the ``(B·T, V)`` product;
* ``kl`` again at 8× the texts: peak RSS must stay flat (the accumulators hold 4 bytes per
  position and statistic; nothing is positions × vocabulary).

The pair is ``ModelPair.load()`` (embedded gemma-3-270m + shipped cake_bake) when the organism
is built, else the embedded base with a random-init LoRA adapter (same shapes and code path).
Usage::

    python benchmarks/kl.py                       # 8 texts × 64 tokens, 8× for the RSS check
    python benchmarks/kl.py --texts 4 --max-tokens 32 --modes floor kl   # about a minute
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _measure import emit, peak_rss_mb, run_mode

MODES = ("floor", "kl", "kl-nofp", "kl-chunked", "naive")


def corpus(pair, n: int, max_tokens: int):
    from difflens.data.corpus import load_texts
    from difflens.models.vocab import tokenize_padded, valid_positions

    texts = load_texts("reference", limit=n, tokenizer=pair.tokenizer)
    ids, attention = tokenize_padded(pair.tokenizer, texts, max_tokens)
    return ids, attention, valid_positions(ids, attention, pair.tokenizer, mask_bos=True)


def worker(mode: str, n: int, max_tokens: int, batch_size: int) -> dict:
    import torch
    from mining import bench_pair  # the same pair as the Diff Mining benchmark

    pair, label = bench_pair()
    ids, attention, valid = corpus(pair, n, max_tokens)
    from difflens.methods.kl.aggregate import KLStats
    from difflens.methods.kl.corpus_pass import kl_pass
    from difflens.models.vocab import shared_vocab

    vocab = shared_vocab(pair)
    last = pair.num_layers - 1
    layers = [pair.arch("ft").resolve_layer(0.5), last]

    def run(rows: slice) -> None:
        i, a, v = ids[rows], attention[rows], valid[rows]
        if mode == "floor":
            for side in ("base", "ft"):
                with pair.use(side) as (model, _arch), torch.inference_mode():
                    for s in range(0, i.shape[0], batch_size):
                        model(input_ids=i[s:s + batch_size],
                              attention_mask=a[s:s + batch_size].long(), use_cache=False)
        elif mode == "naive":
            naive(pair, i, a, v, vocab, batch_size)
        else:
            stats = KLStats(max_tokens, layers, 0 if mode == "kl-nofp" else vocab,
                            ["forward"], 20, 24, 6)
            kl_pass(pair, i, a, v, layers, vocab, stats, batch_size,
                    fingerprint=mode != "kl-nofp", progress=False,
                    path="chunked" if mode == "kl-chunked" else None)
            stats.summary()

    run(slice(0, min(batch_size, n)))  # warm-up: first calls pay allocation and page-in
    start = time.perf_counter()
    run(slice(0, n))
    seconds = time.perf_counter() - start
    positions = int(valid.sum())
    return {"mode": mode, "pair": label, "texts": n, "positions": positions,
            "seconds": round(seconds, 2), "positions_per_s": round(positions / seconds, 1),
            "peak_rss_mb": round(peak_rss_mb()), "threads": torch.get_num_threads()}


def naive(pair, ids, attention, valid, vocab: int, batch_size: int) -> None:
    """Full logits of both models held per batch; KL by kl_div; fingerprint by a (P, V) sum."""
    import torch
    import torch.nn.functional as F

    fingerprint = torch.zeros(vocab, dtype=torch.float64)
    for s in range(0, ids.shape[0], batch_size):
        i, a = ids[s:s + batch_size], attention[s:s + batch_size].long()
        logits = {}
        for side in ("base", "ft"):
            with pair.use(side) as (model, _arch), torch.inference_mode():
                logits[side] = model(input_ids=i, attention_mask=a, use_cache=False) \
                    .logits[..., :vocab].float()
        keep = valid[s:s + batch_size]
        lf = torch.log_softmax(logits["ft"][keep], -1)
        lb = torch.log_softmax(logits["base"][keep], -1)
        F.kl_div(lb, lf, log_target=True, reduction="none").sum(-1)  # KL(p_ft‖p_base)
        fingerprint += (lf.exp() * (lf - lb)).sum(0).double()
        del logits, lf, lb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--texts", type=int, default=8, help="texts in the 1× corpus")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--scale", type=int, default=8, help="the RSS check's corpus multiple")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--mode", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:
        emit(worker(args.mode, args.n, args.max_tokens, args.batch_size))
        return
    common = ["--max-tokens", str(args.max_tokens), "--batch-size", str(args.batch_size)]
    rows = {}
    for mode in args.modes:
        rows[mode] = run_mode(__file__, mode, "--n", str(args.texts), *common)
        print(rows[mode], flush=True)
    if args.scale > 1 and "kl" in args.modes:
        big = run_mode(__file__, "kl", "--n", str(args.texts * args.scale), *common)
        print(big, flush=True)
        print(f"peak RSS kl: {rows['kl']['peak_rss_mb']} MB at 1x, {big['peak_rss_mb']} MB at "
              f"{args.scale}x ({big['positions']} positions)")
    if "floor" in rows:
        floor = rows["floor"]["seconds"]
        for mode, row in rows.items():
            print(f"{mode:<11} {row['seconds']:8.2f} s  {row['positions_per_s']:7.1f} pos/s  "
                  f"{row['seconds'] / floor:5.2f}x floor  peak RSS {row['peak_rss_mb']} MB")


if __name__ == "__main__":
    main()
