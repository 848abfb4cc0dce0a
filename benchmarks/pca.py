"""Benchmark: PCA's covariance pass on the embedded pair, against the collection floor.

    python benchmarks/pca.py [--texts 256] [--tokens 64]

* pca — pass 1 of ``difflens pca`` (:func:`difflens.methods.pca.passes.accumulate`): both
  models over ``--texts`` texts × ``--tokens`` tokens up to one layer, δ at every valid position
  folded into the float64 covariance (Σδδᵀ), δ̄_ADL and Σ‖h_ft‖²;
* floor — the same forward passes (same batches, padding, stop at the same layer) with no
  accumulation: the work any method reading δ at every position must do.

Each mode runs in a fresh process so its peak RSS (VmHWM) is its own.  The layer is fixed
(0.66 depth) so that ADL's layer-choice pass is not timed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from _measure import emit, peak_rss_mb, run_mode

BATCH = 8  # texts per forward: the CPU default of difflens pca


def _setup(n: int, tokens: int):
    from difflens.data.corpus import load_texts
    from difflens.methods.pca.passes import tokenize
    from difflens.models.pair import ModelPair

    pair = ModelPair.load()
    ids, attention = tokenize(pair.tokenizer, load_texts("reference", limit=n), tokens)
    return pair, ids, attention, pair.arch("ft").resolve_layer(0.66)


def mode_pca(n: int, tokens: int) -> dict:
    from difflens.methods.pca.passes import accumulate

    pair, ids, attention, layer = _setup(n, tokens)
    accumulate(pair, ids[:BATCH], attention[:BATCH], [layer], 5, BATCH, progress=False)  # warm
    start = time.perf_counter()
    stats = accumulate(pair, ids, attention, [layer], 5, BATCH, progress=False)
    elapsed = time.perf_counter() - start
    return {"seconds": elapsed, "texts": int(ids.shape[0]), "rows": stats.cov[layer].count,
            "d": stats.cov[layer].d, "layer": layer, "rss_mb": peak_rss_mb()}


def mode_floor(n: int, tokens: int) -> dict:
    from difflens.collect import layer_activations
    from difflens.models.pair import BASE, FT

    pair, ids, attention, layer = _setup(n, tokens)

    def once(stop: int) -> None:
        for s in range(0, stop, BATCH):
            mask = attention[s:s + BATCH].long()
            layer_activations(pair, BASE, ids[s:s + BATCH], [layer], mask)
            layer_activations(pair, FT, ids[s:s + BATCH], [layer], mask)

    once(BATCH)  # warm-up
    start = time.perf_counter()
    once(ids.shape[0])
    elapsed = time.perf_counter() - start
    return {"seconds": elapsed, "texts": int(ids.shape[0]), "rss_mb": peak_rss_mb()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=["pca", "floor"])
    ap.add_argument("--texts", type=int, default=256)
    ap.add_argument("--tokens", type=int, default=64)
    args = ap.parse_args()
    if args.mode:
        emit(globals()[f"mode_{args.mode}"](args.texts, args.tokens))
        return
    here, size = str(Path(__file__)), ["--texts", str(args.texts), "--tokens", str(args.tokens)]
    ours = run_mode(here, "pca", *size)
    floor = run_mode(here, "floor", *size)
    print(f"PCA covariance pass, {ours['texts']} reference texts × {args.tokens} tokens "
          f"({ours['rows']} δ rows, d={ours['d']}, layer {ours['layer']}), batch {BATCH}")
    print(f"  pca (accumulate)  {ours['seconds']:8.2f} s   peak RSS {ours['rss_mb']:7.0f} MiB")
    print(f"  floor (forwards)  {floor['seconds']:8.2f} s   peak RSS {floor['rss_mb']:7.0f} MiB")
    print(f"  pca / floor = {ours['seconds'] / floor['seconds']:.2f}x")


if __name__ == "__main__":
    main()
