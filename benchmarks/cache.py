"""Write speed of ``difflens cache`` against the disk's own sequential write speed, in one run.

Builds an activation cache of a random-init pair (two llama models of the chosen shape, seeds 0
and 1) over a synthetic corpus with :func:`build_cache`, then writes and fsyncs the same number
of bytes, in files of the same sizes, to the same filesystem.  Prints the cache's MB/s, the
disk's MB/s, their ratio (target >= 0.5) and where the build's wall time went: forwards, the
rest of making shards (gathering rows, statistics, the device->host copy) and waiting for the
background writer; with ``--naive`` also the straightforward serial path it replaced (per-row
copy loop on the host, host statistics, serialise + sha256 + write between forwards).

    python benchmarks/cache.py --n-texts 64 --max-tokens 64          # smoke size (CPU)
    python benchmarks/cache.py --naive                                # CPU default, both paths
    python benchmarks/cache.py --device cuda --hidden 640 --layers 18 --cache-layers 13 \\
        --intermediate 2048 --model-dtype bfloat16 --n-texts 4096     # the embedded shape, GPU

On a CPU the forwards dominate (they are the point of the cache); the default model is shallow
and narrow in its MLP so that the writing path is a visible share.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))

WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "river", "town",
         "hills", "cake", "oven", "sugar", "letter", "engine", "garden", "concert",
         "mountain", "library", "harbour"]


def make_pair(args: argparse.Namespace) -> Any:
    import transformers as tf
    from decode import bench_tokenizer

    from difflens.models.pair import ModelPair

    tok = bench_tokenizer()
    heads = max(1, args.hidden // 64)
    config = tf.LlamaConfig(vocab_size=len(tok), hidden_size=args.hidden,
                            intermediate_size=args.intermediate or args.hidden,
                            num_hidden_layers=args.layers, num_attention_heads=heads,
                            num_key_value_heads=max(1, heads // 2),
                            max_position_embeddings=max(4096, args.max_tokens), bos_token_id=1,
                            eos_token_id=2, pad_token_id=0)
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = tf.AutoModelForCausalLM.from_config(config)
        models.append(model.to(args.device, getattr(torch, args.model_dtype)).eval())
    return ModelPair.from_models(models[0], models[1], tok, base_id="bench-base",
                                 ft_id="bench-ft")


def write_corpus(path: Path, n: int, words: int) -> Path:
    rng = random.Random(0)
    lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(words // 2, words)))
             for _ in range(n)]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


class Clock:
    """Seconds spent inside wrapped functions (CUDA synchronised, so device work is counted
    where it is queued)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def wrap(self, name: str, fn: Any) -> Any:
        def timed(*a: Any, **kw: Any) -> Any:
            _sync()
            start = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                _sync()
                self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
        return timed


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def build(pair: Any, config: Any, out: Path, naive: bool) -> dict[str, float]:
    """Build the cache in ``out`` (the current or the naive path); seconds per part."""
    import difflens.collect as collect
    import difflens.methods.dictionary.building as building

    clock = Clock()
    saved = (collect.layer_activations, building.shard_rows, building.CacheWriter.write)
    collect.layer_activations = clock.wrap("forwards", saved[0])
    building.shard_rows = clock.wrap("making shards", naive_shard_rows if naive else saved[1])
    building.CacheWriter.write = clock.wrap("writer", saved[2])
    try:
        start = time.perf_counter()
        if naive:
            naive_build(pair, config, out)
        else:
            building.build_cache(pair, config, out, progress=False)
        clock.seconds["wall"] = time.perf_counter() - start
    finally:
        collect.layer_activations, building.shard_rows, building.CacheWriter.write = saved
    return clock.seconds


def naive_shard_rows(pair: Any, seqs: list, layers: list[int], batch_size: int,
                     dtype: torch.dtype) -> Any:
    """The replaced path: float32 rows copied sequence by sequence from the host tensor."""
    from difflens.collect import layer_activations
    from difflens.data.padding import pad_id, pad_rows
    from difflens.methods.dictionary.building import ShardRows

    d = pair.arch("ft").hidden_size
    n_rows = sum(s.end - s.start for s in seqs)
    acts = {layer: torch.empty(n_rows, 2, d) for layer in layers}
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i].tokens))
    for lo in range(0, len(order), batch_size):
        batch = [seqs[i] for i in order[lo: lo + batch_size]]
        ids, mask = pad_rows([s.tokens for s in batch], pad_id(pair.tokenizer))
        full = bool(mask.all())
        for m, side in enumerate(("base", "ft")):
            out = layer_activations(pair, side, ids, layers, None if full else mask)
            for layer in layers:
                host = out[layer].cpu()
                for row, s in enumerate(batch):
                    acts[layer][s.start: s.end, m] = host[row, s.first_position: len(s.tokens)]
    seq = torch.cat([torch.full((s.end - s.start,), s.seq) for s in seqs])
    pos = torch.cat([torch.arange(s.first_position, len(s.tokens)) for s in seqs])
    return ShardRows(acts, seq, pos, seqs, {})


def naive_build(pair: Any, config: Any, out: Path) -> None:
    """Shards made and written one after the other in the main thread, statistics on the host
    from the float32 rows (:func:`old_stats`), then serialise + sha256 + write."""
    import json
    from dataclasses import asdict

    from difflens.methods.dictionary import building
    from difflens.methods.dictionary.building import CacheWriter, _shard_sequences
    from difflens.methods.dictionary.cache import sha256_hex

    layers = pair.resolve_layers(list(config.layers))
    from difflens.data.corpus import load_texts

    texts = load_texts(config.corpus, limit=config.n_texts, tokenizer=pair.tokenizer)
    kept = building.tokenize_corpus(pair.tokenizer, texts, config)
    plan = building.plan_shards([len(i) - f for _, i, f in kept], config.tokens_per_shard)
    header = {**asdict(config), "layers": layers, "num_layers": pair.num_layers,
              "d_model": pair.arch("ft").hidden_size, "models": {}, "n_shards": len(plan),
              "tokens_sha256": sha256_hex(json.dumps(kept).encode())}
    writer = CacheWriter(out, header)
    for lo, hi in plan:
        rows = building.shard_rows(pair, _shard_sequences(kept, lo, hi), layers,
                                   config.batch_size, torch.float32)
        stats = {layer: old_stats(a) for layer, a in rows.acts.items()}
        acts = {layer: a.to(writer.dtype).contiguous() for layer, a in rows.acts.items()}
        writer.write(writer.next_shard, rows._replace(acts=acts, stats=stats))
    writer.finish()


def old_stats(x: torch.Tensor) -> Any:
    """The replaced statistics: float32 sums of 1024-row blocks accumulated in float64, on the
    host, over the whole shard."""
    from difflens.methods.dictionary.cache import RunningStats

    def row_sum(t: torch.Tensor) -> torch.Tensor:
        total = torch.zeros(t.shape[1:], dtype=torch.float64)
        for part in t.split(1024):
            total += part.sum(0).double()
        return total

    n = x.shape[0]
    stats = RunningStats(2, x.shape[-1])
    mean = row_sum(x) / n
    shift = mean.float()
    stats.count, stats.mean = n, mean
    stats.m2 = row_sum((x - shift).pow_(2)) - n * (mean - shift.double()).pow(2)
    stats.norm_sum = row_sum(x.norm(dim=-1))
    stats.diff_norm_sum = float(row_sum((x[:, 1] - x[:, 0]).norm(dim=-1)))
    return stats


def disk_seconds(sizes: list[int], root: Path) -> float:
    """Seconds to write + fsync files of ``sizes`` bytes (random data) into ``root``."""
    blobs = [os.urandom(n) for n in sizes]
    start = time.perf_counter()
    for i, blob in enumerate(blobs):
        with open(root / f"disk_{i}.bin", "wb") as fh:
            fh.write(blob)
            fh.flush()
            os.fsync(fh.fileno())
    return time.perf_counter() - start


def report(name: str, seconds: dict[str, float], n_bytes: int, disk_mbs: float) -> None:
    wall = seconds["wall"]
    mbs = n_bytes / 1e6 / wall
    forwards = seconds.get("forwards", 0.0)
    making = seconds.get("making shards", 0.0)
    writer = seconds.get("writer", 0.0)
    print(f"{name:<8} {n_bytes / 2**20:8.1f} MiB in {wall:6.2f} s = {mbs:7.1f} MB/s  "
          f"({mbs / disk_mbs:.2f} of the disk)")
    print(f"         wall: forwards {forwards / wall:5.1%}, rest of making shards "
          f"{(making - forwards) / wall:5.1%}, waiting for / doing writes "
          f"{(wall - making) / wall:5.1%}; writer busy {writer:.2f} s "
          f"({writer / wall:.0%} of wall)")
    print(f"         without the forwards' time: {n_bytes / 1e6 / (wall - forwards):7.1f} MB/s "
          f"({n_bytes / 1e6 / (wall - forwards) / disk_mbs:.2f} of the disk)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-texts", type=int, default=512)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--hidden", type=int, default=640, help="d (embedded base: 640)")
    parser.add_argument("--layers", type=int, default=2, help="model depth")
    parser.add_argument("--cache-layers", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--intermediate", type=int, default=128, help="MLP width")
    parser.add_argument("--dtype", default="bfloat16", help="storage dtype")
    parser.add_argument("--model-dtype", default="float32")
    parser.add_argument("--tokens-per-shard", type=int, default=8192)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--naive", action="store_true", help="also time the replaced path")
    parser.add_argument("--dir", default=None, help="where to write (default: $TMPDIR)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from difflens.methods.dictionary.config import CacheConfig

    pair = make_pair(args)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp)
        corpus = write_corpus(root / "corpus.txt", args.n_texts, args.max_tokens)
        config = CacheConfig(corpus=str(corpus), max_tokens=args.max_tokens,
                             layers=args.cache_layers, dtype=args.dtype,
                             tokens_per_shard=args.tokens_per_shard, batch_size=args.batch_size)
        print(f"cache benchmark: {args.n_texts} texts x {args.max_tokens} tokens, d={args.hidden},"
              f" {args.layers} layers (MLP {args.intermediate}), cached {args.cache_layers}, "
              f"{args.dtype} on disk, models {args.model_dtype} on {args.device}, "
              f"{torch.get_num_threads()} threads, {args.tokens_per_shard} tokens per shard")
        build(pair, config, root / "warm", naive=False)  # first calls pay lazy initialisation
        results = {"current": build(pair, config, root / "cache", naive=False)}
        sizes = [p.stat().st_size for p in sorted((root / "cache").glob("shard_*"))]
        if args.naive:
            results["naive"] = build(pair, config, root / "naive", naive=True)
        disk = disk_seconds(sizes, root)
        n_bytes = sum(sizes)
        disk_mbs = n_bytes / 1e6 / disk
        print(f"disk     {n_bytes / 2**20:8.1f} MiB in {disk:6.2f} s = {disk_mbs:7.1f} MB/s "
              f"(write + fsync, {len(sizes)} files, same filesystem)")
        for name, seconds in results.items():
            report(name, seconds, n_bytes, disk_mbs)
        if args.naive:
            speedup = results["naive"]["wall"] / results["current"]["wall"]
            print(f"speed-up over the naive path: {speedup:.2f}x")


if __name__ == "__main__":
    main()
