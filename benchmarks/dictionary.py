"""Training throughput of the BatchTopK crosscoder and diff-SAE against a plain PyTorch loop.

For each dictionary width, these numbers in tokens/s (one token = one row of the batch; for the
crosscoder a row is a (base, ft) pair):

* ``reference`` (the plain loop): a straightforward implementation written here - dense encoder,
  flat top-k over the whole ``B × F`` score matrix, dense masked latents, dense decoder, AuxK via
  dense masks, plain autograd - i.e. what one writes first (and what most research code does);
* ``dense``, ``sparse``, ``auto``: :class:`~difflens.methods.dictionary.Trainer` steps with
  ``DictionaryConfig.compute_path`` forced to the dense path (masked dense latents, dense matrix
  products), forced to the sparse path (sparse decode and sparse gradients), or measured at the
  first step (``auto``, the default: the faster of the two on the real batch); all with the
  candidate-pruned selection, fused Adam and the trainer's lr/k schedule.  The path ``auto``
  chose is printed, and the one-time cost of its measurement (kept out of the step times);
* ``floor``: the dense encoder matmul alone (forward only), which any exact implementation must
  pay.

Every variant is measured in the same run, interleaved step by step (the fastest of ``--steps``
rounds is kept), because absolute times drift on a shared machine.  All run from the same
initial weights, with the same fraction of latents marked dead (so AuxK runs in all); one step
of each is compared first to show they compute the same update.  The reference uses the
default ``torch.optim.Adam``; the last lines time the optimiser step alone (default vs fused) so
the share of the speed-up that comes from it is visible.

The cache section times the activation cache's storage path on synthetic activations (no model):
writing shards (serialisation, sha256, atomic write + fsync, manifest after each shard) and
reading them back through the verifying, shuffling reader, in tokens/s and MB/s, as ratios to
the raw disk speed measured in the same run (write + fsync, then read, of random files of the
same sizes; the page cache is dropped for both before reading).  Usage::

    python benchmarks/dictionary.py                     # d=640, widths 2048 4096 8192 + cache
    python benchmarks/dictionary.py --widths 2048 8192 --steps 3 --skip-cache
    python benchmarks/dictionary.py --cache-only --cache-rows 131072
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from difflens.methods.dictionary import Crosscoder, DictionaryConfig, DiffSAE, TrainConfig, Trainer
from difflens.methods.dictionary.sparse_ops import time_calls

PATHS = ("dense", "sparse", "auto")


class ReferenceBatchTopK(nn.Module):
    """Dense BatchTopK dictionary over ``(B, M, d)`` (M=1 for the SAE), same maths as difflens."""

    def __init__(self, source: nn.Module) -> None:
        super().__init__()
        cfg = source.config
        self.k, self.aux_k, self.alpha = cfg.k, cfg.effective_aux_k, cfg.aux_k_alpha
        self.W_enc = nn.Parameter(source.W_enc.detach().clone())
        self.W_dec = nn.Parameter(source.W_dec.detach().clone())
        self.b_enc = nn.Parameter(source.b_enc.detach().clone())
        self.b_dec = nn.Parameter(source.b_dec.detach().clone())
        self.register_buffer("dead", source.dead_mask().clone())

    def loss(self, x: Tensor) -> Tensor:
        batch, width = x.shape[0], self.W_enc.shape[0]
        x = x.reshape(batch, -1)
        w_enc, w_dec = self.W_enc.reshape(width, -1), self.W_dec.reshape(width, -1)
        acts = torch.relu(x @ w_enc.T + self.b_enc)
        scores = acts * self.W_dec.norm(dim=-1).sum(-1)
        top = torch.topk(scores.detach().flatten(), self.k * batch)
        mask = torch.zeros(batch * width, dtype=torch.bool)
        mask[top.indices[top.values > 0]] = True
        latents = acts * mask.view(batch, width)
        recon = latents @ w_dec + self.b_dec.reshape(-1)
        mse = (recon - x).pow(2).sum(-1).mean()
        # AuxK: per-sample top aux_k among dead latents, reconstruct the residual.
        dead_scores = scores.detach().masked_fill(~self.dead, -1.0)
        aux_top = torch.topk(dead_scores, min(self.aux_k, int(self.dead.sum())), dim=1)
        aux_mask = torch.zeros(batch, width, dtype=torch.bool)
        aux_mask.scatter_(1, aux_top.indices, aux_top.values > 0)
        e_hat = (acts * aux_mask) @ w_dec
        auxk = (e_hat - (x - recon).detach()).pow(2).sum(-1).mean()
        return mse + self.alpha * auxk


def _time(fn: Callable[[], object], steps: int) -> float:
    """Mean seconds of ``fn`` over ``steps`` calls after one warm-up call."""
    fn()  # warm-up (allocations, first-call overheads)
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - start) / steps


def bench(kind: str, d: int, width: int, batch: int, k: int, steps: int, dead: float) -> dict:
    gen = torch.Generator().manual_seed(1)
    n_models = 2 if kind == "crosscoder" else 1
    x = torch.randn(batch, n_models, d, generator=gen)
    model_input = x if kind == "crosscoder" else x[:, 0]
    n_dead = int(dead * width)  # a fixed set of dead latents in every variant: AuxK runs
    train_cfg = TrainConfig(steps=10**6, batch_size=batch, lr=1e-4, warmup_steps=0, progress=False,
                            log_every=10**6, norm_sample_rows=0)
    steps_of: dict[str, Callable[[], None]] = {}
    models = {}
    for path in PATHS:
        cfg = DictionaryConfig(d_in=d, width=width, k=k, dead_tokens=10**11, seed=0,
                               compute_path=path)
        model = Crosscoder(cfg) if kind == "crosscoder" else DiffSAE(cfg)
        with torch.no_grad():
            model.tokens_since_fired.zero_()
            model.tokens_since_fired[:n_dead] = 10**12
        trainer = Trainer(model, train_cfg)

        def ours_step(trainer: Trainer = trainer, model: nn.Module = model) -> None:
            trainer.train_step(model_input)
            model.tokens_since_fired[:n_dead] = 10**12  # the dead set stays fixed

        models[path], steps_of[path] = model, ours_step
    ref = ReferenceBatchTopK(models["dense"])
    ref_opt = torch.optim.Adam(ref.parameters(), lr=1e-4)

    def ref_step() -> None:
        ref_opt.zero_grad(set_to_none=True)
        ref.loss(x).backward()
        ref_opt.step()

    # Same update check: one step of each from identical weights (auto measures its paths here).
    ref_step()
    steps_of["dense"]()
    steps_of["sparse"]()
    start = time.perf_counter()
    steps_of["auto"]()
    first_auto = time.perf_counter() - start
    max_diff = max(float((ref.W_dec.detach() - models[p].W_dec.detach()).abs().max())
                   for p in PATHS)
    (choice,) = models["auto"].path_choice.values()

    w_enc = models["dense"].W_enc.detach().reshape(width, -1)
    flat = x.reshape(batch, -1)
    floor = lambda: torch.addmm(models["dense"].b_enc.detach(), flat, w_enc.T)  # noqa: E731
    seconds = time_calls({"ref": ref_step, **steps_of, "floor": floor}, torch.device("cpu"),
                         repeats=steps, max_repeats=steps)
    result = {name: batch / t for name, t in seconds.items()}
    return {"kind": kind, "width": width, **result, "choice": choice, "max_diff": max_diff,
            "trial_s": first_auto - seconds["auto"]}


def adam_step_ms(width: int, d: int, steps: int) -> tuple[float, float]:
    """Milliseconds of one Adam step over a crosscoder's parameters: default vs fused."""
    times = []
    for fused in (False, True):
        params = [nn.Parameter(torch.randn(width, 2, d)) for _ in range(2)]
        for p in params:
            p.grad = torch.randn_like(p)
        opt = torch.optim.Adam(params, lr=1e-4, fused=fused)
        times.append(_time(opt.step, steps) * 1000)
    return times[0], times[1]


def _drop_page_cache(files: list[Path]) -> None:
    """Evict ``files`` from the page cache (clean pages; no root needed) so reads hit the disk."""
    for file in files:
        fd = os.open(file, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def raw_disk(sizes: list[int], root: Path) -> tuple[float, float]:
    """Seconds to write (+ fsync) and to read back random files of ``sizes`` bytes."""
    blobs = [os.urandom(n) for n in sizes]
    files = [root / f"raw_{i}.bin" for i in range(len(sizes))]
    start = time.perf_counter()
    for file, blob in zip(files, blobs, strict=True):
        with open(file, "wb") as fh:
            fh.write(blob)
            fh.flush()
            os.fsync(fh.fileno())
    write = time.perf_counter() - start
    _drop_page_cache(files)
    start = time.perf_counter()
    for file in files:
        file.read_bytes()
    return write, time.perf_counter() - start


def bench_cache(rows: int, d: int, dtype: str, tokens_per_shard: int, root: Path) -> dict:
    """Write ``rows`` synthetic paired rows as a cache, read them back; time both."""
    from difflens.methods.dictionary.cache import ActivationCache, Sequence
    from difflens.methods.dictionary.runner import CacheWriter

    seq_len, n_shards = 128, max(1, rows // tokens_per_shard)
    per_shard = rows // n_shards
    header = {"models": {"base": "synthetic", "finetuned": "synthetic"}, "layers": [0],
              "num_layers": 1, "d_model": d, "dtype": dtype, "n_sequences": rows // seq_len,
              "n_shards": n_shards, "n_rows": per_shard * n_shards}
    gen = torch.Generator().manual_seed(0)
    shards = []  # generated up front: only the cache's own work is timed
    for index in range(n_shards):
        first = index * per_shard // seq_len
        seqs = [Sequence(first + i, first + i, i * seq_len, (i + 1) * seq_len, 0,
                         list(range(seq_len))) for i in range(per_shard // seq_len)]
        seq = torch.arange(first, first + len(seqs)).repeat_interleave(seq_len)
        pos = torch.arange(seq_len).repeat(len(seqs))
        shards.append(({0: torch.randn(seq.numel(), 2, d, generator=gen)}, seq, pos, seqs))
    out = root / f"cache-{dtype}"
    start = time.perf_counter()
    writer = CacheWriter(out, header)
    for acts, seq, pos, seqs in shards:
        writer.write_shard(acts, seq, pos, seqs)
    writer.finish()
    write = time.perf_counter() - start
    cache = ActivationCache(out)
    files = [out / e["file"] for e in cache.shards]
    sizes = [f.stat().st_size for f in files]
    result = {"dtype": dtype, "rows": cache.n_rows, "bytes": sum(sizes), "write": write}
    for name, shuffle in (("read", False), ("read shuffled", True)):
        _drop_page_cache(files)
        start = time.perf_counter()
        n = sum(c.shape[0] for c in cache.reader(0, "all", shuffle=shuffle, seed=1,
                                                  buffer_rows=tokens_per_shard))
        result[name] = time.perf_counter() - start
        assert n == cache.n_rows
    result["raw write"], result["raw read"] = raw_disk(sizes, root)
    return result


def print_cache_bench(args: argparse.Namespace) -> None:
    print(f"\nactivation cache: {args.cache_rows} tokens, d={args.d}, "
          f"{args.tokens_per_shard} tokens per shard")
    header = (f"{'dtype':<9}{'phase':<15}{'tokens/s':>11}{'MB/s':>9}{'raw disk MB/s':>15}"
              f"{'of raw':>8}")
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory(dir=args.cache_dir) as tmp:
        for dtype in ("float32", "bfloat16"):
            r = bench_cache(args.cache_rows, args.d, dtype, args.tokens_per_shard, Path(tmp))
            mb = r["bytes"] / 1e6
            for phase, raw in (("write", "raw write"), ("read", "raw read"),
                               ("read shuffled", "raw read")):
                print(f"{dtype:<9}{phase:<15}{r['rows'] / r[phase]:>11.0f}"
                      f"{mb / r[phase]:>9.0f}{mb / r[raw]:>15.0f}{r[raw] / r[phase]:>8.0%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--d", type=int, default=640)
    parser.add_argument("--widths", type=int, nargs="+", default=[2048, 4096, 8192])
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per configuration")
    parser.add_argument("--dead", type=float, default=0.25, help="fraction of latents marked dead")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--cache-rows", type=int, default=1 << 16,
                        help="tokens written/read by the cache benchmark")
    parser.add_argument("--tokens-per-shard", type=int, default=1 << 14)
    parser.add_argument("--cache-dir", default=None, help="where to write (default: $TMPDIR)")
    parser.add_argument("--cache-only", action="store_true", help="skip the training benchmark")
    parser.add_argument("--skip-cache", action="store_true", help="skip the cache benchmark")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.cache_only:
        print_cache_bench(args)
        return
    print(f"d={args.d} batch={args.batch_size} k={args.k} dead={args.dead:.0%} "
          f"threads={torch.get_num_threads()} torch={torch.__version__}")
    print("tokens/s (fastest of interleaved steps); ratios are to the plain loop (reference)")
    header = (f"{'model':<11}{'width':>6}{'reference':>11}{'dense':>9}{'sparse':>9}{'auto':>9}"
              f"{'dense×':>8}{'sparse×':>8}{'auto×':>7}  {'auto chose':<20}{'trial':>7}"
              f"{'of floor':>9}{'1-step Δ':>10}")
    print(header)
    print("-" * len(header))
    for kind in ("crosscoder", "diff_sae"):
        for width in args.widths:
            r = bench(kind, args.d, width, args.batch_size, args.k, args.steps, args.dead)
            c = r["choice"]
            chose = f"{c['path']} ({c['dense_ms']:.0f}/{c['sparse_ms']:.0f} ms)"
            print(f"{kind:<11}{width:>6}{r['ref']:>9.0f}/s{r['dense']:>7.0f}/s"
                  f"{r['sparse']:>7.0f}/s{r['auto']:>7.0f}/s{r['dense'] / r['ref']:>7.2f}x"
                  f"{r['sparse'] / r['ref']:>7.2f}x{r['auto'] / r['ref']:>6.2f}x  {chose:<20}"
                  f"{r['trial_s']:>6.1f}s{r['auto'] / r['floor']:>9.0%} {r['max_diff']:>9.1e}")
    for width in args.widths:
        plain, fused = adam_step_ms(width, args.d, args.steps)
        print(f"Adam step alone, crosscoder width {width}: default {plain:.0f} ms, "
              f"fused {fused:.0f} ms")
    if not args.skip_cache:
        print_cache_bench(args)


if __name__ == "__main__":
    main()
