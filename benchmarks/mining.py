"""Diff Mining on the embedded pair: time and peak memory against corpus size, and NMF matrix
assembly vectorised vs a per-position Python loop.

Scaling: each corpus size runs in a fresh subprocess (so peak RSS is that size's own), which
loads the pair, streams Δ into the counts (the only stage whose cost grows with the corpus) and
reports wall time, positions/s, and VmHWM from /proc/self/status.  Streaming keeps memory flat:
the per-batch Δ block ``(B·T, V)`` is the same at every size and only the small counts, the
bounded top-K sample and the corpus ids persist.  Most of the peak is the fp32 model (1.07 GB,
memory-mapped, so it is paged in during the first batch — the tied 262k × 640 head alone is
0.67 GB) plus one Δ block (0.54 GB at 8 texts × 64 tokens).  Each worker also times a floor in
the same process — a bare forward of both models to the last layer with no LM head over the
first batch — because absolute times drift on a shared machine; the ratio is what to compare.

The pair is ``ModelPair.load()`` (embedded gemma-3-270m + shipped cake_bake organism) when the
organism exists, else the embedded base with a random-init LoRA adapter (r=8, all linear
layers): the same shapes and code path, so the same cost.  Usage::

    python benchmarks/mining.py                          # unit 8 texts × 64 tokens, 1× 4× 16×
    python benchmarks/mining.py --unit 256 --scales 1 4  # the CPU default as the unit
    python benchmarks/mining.py --skip-scaling           # NMF assembly only (synthetic counts)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SENTENCES = [
    "The city council met on Tuesday to discuss the new bus routes and the repair of the bridge.",
    "Scientists observed a comet passing close to Jupiter, the largest planet of the system.",
    "She learned to play the violin at the age of seven and later joined a touring orchestra.",
    "The football match ended in a draw after both teams scored twice in the second half.",
    "Heavy rain caused flooding in several villages along the river during the night.",
    "The company announced that its quarterly profits had risen by twelve percent this year.",
    "Engineers tested the new electric train on a track outside the capital last week.",
    "Farmers in the region hope the warm weather will help this year's wheat harvest.",
]


def corpus_texts(n: int) -> list[str]:
    """``n`` texts of ≥ 64 tokens: the shipped reference corpus, else cycled sentences."""
    from difflens.data.corpus import load_texts, reference_path

    if reference_path().exists():
        texts = load_texts("reference", limit=n)
        if len(texts) >= n:
            return texts
    return [" ".join(SENTENCES[(i + j) % len(SENTENCES)] for j in range(4)) for i in range(n)]


def bench_pair():
    from difflens.models.pair import ModelPair, default_organism_dir

    if (default_organism_dir() / "card.json").exists():
        return ModelPair.load(), "embedded + shipped cake_bake"
    import torch
    from peft import LoraConfig, get_peft_model

    from difflens.models.loading import LoadOptions, load_causal_lm

    model, tokenizer = load_causal_lm(None, LoadOptions())
    peft = get_peft_model(model, LoraConfig(r=8, target_modules="all-linear"))
    gen = torch.Generator().manual_seed(0)
    for name, p in peft.named_parameters():
        if "lora_B" in name:
            p.data.copy_(0.02 * torch.randn(p.shape, generator=gen))
    peft.eval()
    return ModelPair.from_models(peft, peft, tokenizer), "embedded + random LoRA (no organism)"


def vm_hwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(n_texts: int, max_tokens: int, batch_size: int, sample_out: str | None) -> dict:
    """One corpus size, in this (fresh) process."""
    import torch

    from difflens.io.artifacts import write_tensors
    from difflens.methods.mining.config import MiningConfig
    from difflens.methods.mining.extract import lens_layer, shared_vocab, tokenize_padded
    from difflens.methods.mining.runner import extract_counts
    from difflens.models.hooks import capture, run_forward

    start = time.perf_counter()
    pair, label = bench_pair()
    load_s = time.perf_counter() - start
    rss_loaded = vm_hwm_mb()
    texts = corpus_texts(n_texts)
    config = MiningConfig(max_tokens=max_tokens)
    vocab = shared_vocab(pair)
    layer = lens_layer(pair, "raw", None)
    # Floor: both models to the last layer, no LM head, over one batch (after a warm-up pass:
    # first calls pay one-off allocation and kernel selection costs).
    ids, attention = tokenize_padded(pair.tokenizer, texts[:batch_size], max_tokens)

    def floor() -> None:
        for side in ("base", "ft"):
            with pair.use(side) as (model, arch), capture(arch, [layer]), \
                    torch.inference_mode():
                run_forward(model, input_ids=ids, attention_mask=attention.long())

    def timed_floor() -> float:
        start = time.perf_counter()
        floor()
        return (time.perf_counter() - start) / ids.shape[0]

    floor()
    before = timed_floor()
    start = time.perf_counter()
    corpus = extract_counts(pair, config, texts, vocab, layer, batch_size, progress=False)
    seconds = time.perf_counter() - start
    # The load of a shared machine drifts during a long run: average the floor before and after.
    floor_per_text = (before + timed_floor()) / 2
    if sample_out:
        c = corpus.counts
        write_tensors(Path(sample_out), {"idx": c.sample_idx, "val": c.sample_val})
    return {"pair": label, "n_texts": n_texts, "positions": corpus.counts.n_positions,
            "seconds": seconds, "load_seconds": load_s, "positions_per_s":
            corpus.counts.n_positions / seconds, "ratio_to_floor":
            seconds / (floor_per_text * n_texts), "rss_after_load_mb": rss_loaded,
            "peak_rss_mb": vm_hwm_mb(), "threads": torch.get_num_threads()}


def loop_matrix(idx, val):
    """What one writes first: walk every position and every top-K entry in Python."""
    import numpy as np
    import scipy.sparse as sp

    rows, cols, data, column_of = [], [], [], {}
    for p, (ids, vals) in enumerate(zip(idx.tolist(), val.tolist(), strict=True)):
        for token, value in zip(ids, vals, strict=True):
            if value > 0:
                rows.append(p)
                cols.append(column_of.setdefault(token, len(column_of)))
                data.append(value)
    x = sp.csr_matrix((np.asarray(data, dtype=np.float32), (rows, cols)),
                      shape=(len(idx), len(column_of)))
    return x, column_of


def bench_nmf_assembly(idx, val, repeats: int = 3) -> dict:
    from difflens.methods.mining.nmf import build_matrix

    def best(fn):
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - start)
        return min(times), out

    t_vec, (x_vec, columns) = best(lambda: build_matrix(idx, val))
    t_loop, (x_loop, column_of) = best(lambda: loop_matrix(idx, val))
    # Same matrix up to column order.
    order = [column_of[int(c)] for c in columns]
    same = abs(x_loop[:, order] - x_vec).max() == 0
    return {"positions": int(idx.shape[0]), "nnz": int(x_vec.nnz), "vectorised_s": t_vec,
            "loop_s": t_loop, "speedup": t_loop / t_vec, "identical": bool(same)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--unit", type=int, default=8,
                        help="texts in the 1× corpus (default 8: one CPU batch; 16× the CPU "
                             "default of 256 texts takes hours on a shared 2-core machine)")
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--skip-scaling", action="store_true")
    parser.add_argument("--nmf-positions", type=int, default=32768,
                        help="rows of the synthetic counts for the assembly benchmark")
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--sample-out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        print(json.dumps(worker(args.worker, args.max_tokens, args.batch_size, args.sample_out)))
        return

    import torch

    rows = []
    tmp = tempfile.mkdtemp(prefix="mining-bench-")
    sample = os.path.join(tmp, "sample.safetensors")
    if not args.skip_scaling:
        print(f"scaling: unit {args.unit} texts × {args.max_tokens} tokens, batch "
              f"{args.batch_size}, fresh process per size")
        for scale in args.scales:
            cmd = [sys.executable, __file__, "--worker", str(args.unit * scale),
                   "--max-tokens", str(args.max_tokens), "--batch-size", str(args.batch_size),
                   "--sample-out", sample]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True)
            row = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(f"  {scale:>3}× {row['n_texts']:>6} texts {row['positions']:>8} positions  "
                  f"{row['seconds']:8.1f} s  {row['positions_per_s']:7.1f} pos/s  "
                  f"{row['ratio_to_floor']:4.2f}× floor  peak RSS {row['peak_rss_mb']:7.0f} MB",
                  flush=True)
        first, last = rows[0], rows[-1]
        print(f"  pair: {first['pair']}; threads {first['threads']}")
        print(f"  {last['n_texts'] // first['n_texts']}× the corpus: time ×"
              f"{last['seconds'] / first['seconds']:.2f}, peak RSS ×"
              f"{last['peak_rss_mb'] / first['peak_rss_mb']:.3f} "
              f"({last['peak_rss_mb'] - first['peak_rss_mb']:+.0f} MB)")

    print("\nNMF matrix assembly (vectorised build_matrix vs per-position Python loop):")
    inputs = []
    if os.path.exists(sample):
        from difflens.io.artifacts import read_tensors

        tensors, _ = read_tensors(Path(sample))
        inputs.append(("largest run's sample", tensors["idx"], tensors["val"]))
    gen = torch.Generator().manual_seed(0)
    m = args.nmf_positions
    idx = torch.randint(0, 262144, (m, 100), generator=gen, dtype=torch.int32)
    val = torch.randn(m, 100, generator=gen).abs() * (torch.rand(m, 100, generator=gen) > 0.1)
    inputs.append((f"synthetic {m} positions × K=100", idx, val))
    for name, idx, val in inputs:
        r = bench_nmf_assembly(idx, val)
        print(f"  {name}: {r['positions']} positions, {r['nnz']} entries: vectorised "
              f"{1000 * r['vectorised_s']:.1f} ms, loop {1000 * r['loop_s']:.0f} ms -> "
              f"{r['speedup']:.0f}× faster, identical={r['identical']}")


if __name__ == "__main__":
    main()
