"""Benchmark: paired activation collection on the embedded pair, against a floor and a naive way.

    python benchmarks/collect.py [--texts 1000] [--naive-texts 50]

* difflens — streaming collection of δ̄ (first k=5 tokens, one layer at ~2/3 depth, forward
  stopped at that layer, base pass = adapter disabled, weights in memory once);
* floor — a bare forward of the base decoder over the same (N, 5) tokens up to the same layer,
  run twice (the work any method must do for two models);
* depth (``--mode depth``) — ADL's collection stage (δ̄ and norms) reading every layer, as ADL
  now does to choose its readout layer, against reading up to 0.75 depth only (the old
  default), in one process;
* naive — how research code does it: two separately loaded full models, full-length texts (128
  tokens), ``output_hidden_states=True`` with the LM head, every activation kept.  It is ~100×
  slower, so it runs on ``--naive-texts`` texts and its time is scaled per text (said below).
Each mode runs in a fresh process so peak RSS (VmHWM) is its own.
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

K = 5
BATCH = 256  # texts per forward, the same for difflens and the floor


def _layer(pair) -> int:
    return pair.arch("ft").resolve_layer(0.66)


def mode_difflens(n: int) -> dict:
    from difflens.collect import collect_mean_diff
    from difflens.data.corpus import load_texts
    from difflens.models.pair import ModelPair

    pair = ModelPair.load()
    texts = load_texts("reference", limit=n)
    layer = _layer(pair)
    collect_mean_diff(pair, texts[:BATCH], [layer], k=K, batch_size=BATCH, progress=False)
    start = time.perf_counter()
    stats = collect_mean_diff(pair, texts, [layer], k=K, batch_size=BATCH, progress=False)
    elapsed = time.perf_counter() - start
    return {"seconds": elapsed, "texts": stats.count, "rss_mb": peak_rss_mb(),
            "norm": float(stats.mean_diff(layer)[1:].mean(0).norm())}


def mode_floor(n: int) -> dict:
    import torch

    from difflens.data.corpus import load_texts
    from difflens.data.tokenize import first_k_tokens
    from difflens.models.loading import LoadOptions, load_causal_lm

    model, tokenizer = load_causal_lm("embedded", LoadOptions())
    decoder = model.model
    layer = round(0.66 * (len(decoder.layers) - 1))
    decoder.layers = decoder.layers[: layer + 1]  # a bare decoder truncated at the layer
    tokens = first_k_tokens(tokenizer, load_texts("reference", limit=n), K)
    with torch.inference_mode():
        decoder(input_ids=tokens[:BATCH])
        start = time.perf_counter()
        for _ in range(2):
            for i in range(0, tokens.shape[0], BATCH):
                decoder(input_ids=tokens[i : i + BATCH], use_cache=False)
        elapsed = time.perf_counter() - start
    return {"seconds": elapsed, "texts": tokens.shape[0], "rss_mb": peak_rss_mb()}


def mode_naive(n: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from difflens.data.corpus import load_texts
    from difflens.models.embedded import embedded_base_dir
    from difflens.models.pair import default_organism_dir

    base_dir = str(embedded_base_dir())
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    base = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    from peft import PeftModel

    ft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir),
                                   str(default_organism_dir() / "adapter")).merge_and_unload()
    ft.eval()
    texts = load_texts("reference", limit=n)
    kept = []
    start = time.perf_counter()
    with torch.inference_mode():
        for text in texts:
            ids = tokenizer(text, return_tensors="pt", truncation=True, max_length=128)
            hb = base(**ids, output_hidden_states=True).hidden_states
            hf = ft(**ids, output_hidden_states=True).hidden_states
            kept.append((hb, hf))
    elapsed = time.perf_counter() - start
    return {"seconds": elapsed, "texts": len(texts), "rss_mb": peak_rss_mb()}


def mode_depth(n: int) -> dict:
    from difflens.data.corpus import load_texts
    from difflens.methods.adl.collect_stage import collect
    from difflens.models.pair import ModelPair

    pair = ModelPair.load()
    texts = load_texts("reference", limit=n)
    out: dict = {"texts": len(texts), "layers": pair.num_layers}
    collect(pair, texts[:BATCH], [0], K, BATCH, progress=False)  # warm-up
    for name, deepest in (("depth_075", pair.arch("ft").resolve_layer(0.75)),
                          ("full", pair.num_layers - 1)):
        start = time.perf_counter()
        collect(pair, texts, list(range(deepest + 1)), K, BATCH, progress=False)
        out[name] = time.perf_counter() - start
        out[f"{name}_layers"] = deepest + 1
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=["difflens", "floor", "naive", "depth"])
    ap.add_argument("--texts", type=int, default=1000)
    ap.add_argument("--naive-texts", type=int, default=50)
    args = ap.parse_args()
    if args.mode == "depth":
        out = mode_depth(args.texts)
        print(f"ADL collection stage (δ̄ + norms), {out['texts']} texts, k={K}:")
        print(f"  layers 0..{out['depth_075_layers'] - 1} (old 0.75 depth)  "
              f"{out['depth_075']:7.2f} s")
        print(f"  layers 0..{out['full_layers'] - 1} (every layer)      {out['full']:7.2f} s")
        print(f"  every layer / 0.75 depth = {out['full'] / out['depth_075']:.2f}x")
        return
    if args.mode:
        n = args.naive_texts if args.mode == "naive" else args.texts
        emit(globals()[f"mode_{args.mode}"](n))
        return
    here = str(Path(__file__))
    ours = run_mode(here, "difflens", "--texts", str(args.texts))
    floor = run_mode(here, "floor", "--texts", str(args.texts))
    naive = run_mode(here, "naive", "--naive-texts", str(args.naive_texts))
    naive_scaled = naive["seconds"] / naive["texts"] * ours["texts"]
    print(f"paired collection, {ours['texts']} reference texts, k={K}, one layer at 2/3 depth")
    print(f"  difflens   {ours['seconds']:8.2f} s   peak RSS {ours['rss_mb']:7.0f} MiB")
    print(f"  floor      {floor['seconds']:8.2f} s   peak RSS {floor['rss_mb']:7.0f} MiB"
          "   (bare base decoder to the layer, twice)")
    print(f"  naive      {naive_scaled:8.2f} s   peak RSS {naive['rss_mb']:7.0f} MiB"
          f"   (measured on {naive['texts']} texts, scaled per text)")
    print(f"  difflens / floor        = {ours['seconds'] / floor['seconds']:.2f}x  (target <= 1.2)")
    print(f"  naive / difflens        = {naive_scaled / ours['seconds']:.1f}x  (target >= 5)")
    print(f"  RSS difflens / 1 model  = {ours['rss_mb'] / floor['rss_mb']:.2f}x  (target <= 1.3)")


if __name__ == "__main__":
    main()
