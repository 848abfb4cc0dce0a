"""ADL collection data-parallel: 1 process vs 2 torchrun ranks (gloo) on the embedded pair.

Each configuration is a fresh ``python -m torch.distributed.run --standalone`` launch of
``difflens adl`` with every stage after the logit lens skipped, so the run is model loading +
the collection (mean differences over the first k tokens, then the activation norms) + the lens.
Reported per configuration: the wall time of the whole command and rank 0's ``collect`` stage
time (its shard plus the merge); the speedup / scaling efficiency of 2 ranks × 1 thread against
1 process × 1 thread (the faster of two 1-process runs), and equality: max |δ̄ difference| over
every layer and position (absolute and relative to max |δ̄|), max |ν difference|, the readout
layer and the top-20 logit-lens tokens at every layer — for 2 ranks vs 1 process and, as the
floor, for the 1-process run repeated (fp32 CPU kernels are not bit-reproducible across
processes).  ``--with-threads`` adds 1 process × 2 threads.

Expect little speedup on a shared 2-core machine: one process already uses both cores through
intra-op threads, and two ranks each load their own copy of the models.  Usage::

    python benchmarks/distributed.py                 # 256 texts × k=5
    python benchmarks/distributed.py --n-texts 64    # a quick check
    python benchmarks/distributed.py --train --n-texts 64   # dictionary training, 1 vs 2 ranks

``--train`` also trains with ``--data-split shards`` on 2 ranks and replays each rank's loader
alone (no training) for the same steps under both splits: rows read from disk (and sha256-
checked) and rows handed to the trainer per rank, and the loader's seconds per rank.
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

SKIP = ["patchscope", "steering", "relevance", "similarity", "causal", "report"]


def launch(out: Path, procs: int, threads: int, n_texts: int, k: int, batch: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           str(procs), "-m", "difflens.cli", "adl", "--n-texts", str(n_texts), "--k", str(k),
           "--batch-size", str(batch), "--skip", *SKIP, "--quiet", "--out", str(out)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{procs} process(es) failed:\n{proc.stderr[-3000:]}")
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    return {"procs": procs, "threads_per_proc": threads, "wall_s": round(wall, 2),
            "collect_s": summary["timings"]["collect"]}


def compare(a: Path, b: Path) -> dict:
    from difflens.methods.adl.result import ADLResult

    ra, rb = ADLResult.load(a), ADLResult.load(b)
    da, db = ra.difference(), rb.difference()
    delta = max(float((da.stats.mean_diff(layer).double() - db.stats.mean_diff(layer).double())
                      .abs().max()) for layer in db.stats.layers)
    delta = max(delta, max(float((da.stats.diff[layer].mean - db.stats.diff[layer].mean)
                                 .abs().max()) for layer in db.stats.layers))
    nu = max(abs(da.norms[s][layer] - v) for s, per in db.norms.items()
             for layer, v in per.items())
    same_tokens = all(ra.lens[layer].mean.tokens[:20] == rb.lens[layer].mean.tokens[:20]
                      for layer in rb.lens)
    scale = max(float(db.stats.diff[layer].mean.abs().max()) for layer in db.stats.layers)
    return {"max_abs_mean_diff": delta, "relative": delta / scale, "max_abs_norm_diff": nu,
            "same_top20_tokens_every_layer": same_tokens, "same_readout_layer":
            ra.layer == rb.layer}


def launch_train(cache: Path, out: Path, procs: int, steps: int, batch: int, width: int,
                 split: str = "stream") -> dict:
    """``difflens train crosscoder`` on ``procs`` torchrun ranks × 1 thread: wall seconds."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           str(procs), "-m", "difflens.cli", "train", "crosscoder", "--cache", str(cache),
           "--width", str(width), "--k", "32", "--steps", str(steps), "--batch-size", str(batch),
           "--checkpoint-every", "0", "--data-split", split, "--quiet", "--out", str(out)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"training on {procs} process(es) failed:\n{proc.stderr[-3000:]}")
    return {"procs": procs, "split": split, "wall_s": round(wall, 2)}


def loader_rows(cache_dir: Path, steps: int, batch: int, ranks: int) -> list[dict]:
    """Each rank's cache reader replayed alone for ``steps`` steps under both data splits (the
    train run's reader settings): rows of the shards it read (each read in full and
    sha256-checked), rows it handed on, and its seconds."""
    from difflens.methods.dictionary.cache import ActivationCache

    rows = []
    for split in ("stream", "shards"):
        need = steps * (batch // ranks if split == "shards" else batch)  # rows a rank consumes
        for rank in range(ranks):
            cache = ActivationCache(cache_dir)
            read = [0]
            plain = cache.read_shard

            def counted(index, layers=None, plain=plain, read=read, cache=cache):
                read[0] += int(cache.shards[index]["rows"])
                return plain(index, layers)

            cache.read_shard = counted  # type: ignore[method-assign]
            reader = cache.reader(None, "train", epochs=None, data_split=split, rank=rank,
                                  world_size=ranks)
            handed, start = 0, time.perf_counter()
            for chunk in reader:
                handed += chunk.shape[0]
                if handed >= need:
                    break
            rows.append({"split": split, "rank": rank, "rows_read": read[0],
                         "rows_consumed": need, "loader_s": round(time.perf_counter() - start, 3)})
    return rows


def train_rows(args: argparse.Namespace) -> None:
    """Dictionary training data-parallel (``--train``): a cache of the embedded pair, then a
    crosscoder trained by 1 process and by 2 ranks (DDP); wall times and the largest weight
    difference (the floor: 1 process run twice)."""
    from difflens.methods.dictionary import load_dictionary

    def max_diff(a: Path, b: Path) -> float:
        sa = load_dictionary(a / "dictionary").state_dict()
        sb = load_dictionary(b / "dictionary").state_dict()
        return max(float((sa[k].double() - sb[k].double()).abs().max()) for k in sa)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        env = {**os.environ, "OMP_NUM_THREADS": "2", "HF_HUB_OFFLINE": "1"}
        subprocess.run([sys.executable, "-m", "difflens.cli", "cache", "--n-texts",
                        str(args.n_texts), "--max-tokens", "64", "--tokens-per-shard",
                        str(args.train_shard_tokens), "--quiet", "--out", str(root / "cache")],
                       env=env, check=True)
        sizes = (args.train_steps, args.train_batch, args.train_width)
        rows = [launch_train(root / "cache", root / "t1", 1, *sizes),
                launch_train(root / "cache", root / "t2", 2, *sizes),
                launch_train(root / "cache", root / "t1again", 1, *sizes),
                launch_train(root / "cache", root / "t2shards", 2, *sizes, split="shards")]
        equal, noise = max_diff(root / "t2", root / "t1"), max_diff(root / "t1again", root / "t1")
        loaders = loader_rows(root / "cache", args.train_steps, args.train_batch, 2)
    one = min(rows[0]["wall_s"], rows[2]["wall_s"])
    for row in rows:
        print(f"train: {row['procs']} proc × 1 thread, --data-split {row['split']}: wall "
              f"{row['wall_s']:.1f} s")
    print(f"train: 2 ranks vs 1 process: wall speedup {one / rows[1]['wall_s']:.2f}× (stream), "
          f"{one / rows[3]['wall_s']:.2f}× (shards); max |Δ weight| stream vs 1 process "
          f"{equal:.3g} (1 process twice: {noise:.3g})")
    for row in loaders:
        print(f"loader: --data-split {row['split']} rank {row['rank']}: read {row['rows_read']} "
              f"rows, handed {row['rows_consumed']} to training, {row['loader_s']:.2f} s")
    print(json.dumps({"train": rows, "loaders": loaders, "steps": args.train_steps,
                      "batch_size": args.train_batch, "width": args.train_width,
                      "max_abs_weight_diff_2v1": equal, "max_abs_weight_diff_1v1": noise}))


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--n-texts", type=int, default=256)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32,
                        help="texts per forward (the same batches on 1 and 2 ranks when the "
                             "shards are multiples of it)")
    parser.add_argument("--with-threads", action="store_true",
                        help="also time 1 process × 2 threads (pathological on a shared "
                             "machine: spinning OpenMP threads)")
    parser.add_argument("--train", action="store_true",
                        help="instead: dictionary training, 1 process vs 2 ranks (DDP) on a "
                             "cache of --n-texts texts of the embedded pair")
    parser.add_argument("--train-steps", type=int, default=200)
    parser.add_argument("--train-batch", type=int, default=1024)
    parser.add_argument("--train-width", type=int, default=4096)
    parser.add_argument("--train-shard-tokens", type=int, default=1024,
                        help="rows per cache shard (enough shards to split between 2 ranks)")
    args = parser.parse_args()
    if args.train:
        train_rows(args)
        return
    sizes = (args.n_texts, args.k, args.batch_size)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rows = [launch(root / "p1", 1, 1, *sizes), launch(root / "p2", 2, 1, *sizes),
                launch(root / "p1again", 1, 1, *sizes)]
        if args.with_threads:
            rows.append(launch(root / "p1t2", 1, 2, *sizes))
        equal = compare(root / "p2", root / "p1")
        noise = compare(root / "p1again", root / "p1")  # the floor: 1 process run twice
    one = min(rows[0]["collect_s"], rows[2]["collect_s"])
    two = rows[1]["collect_s"]
    speedup = one / two if two else float("nan")
    result = {"n_texts": args.n_texts, "k": args.k, "batch_size": args.batch_size,
              "cores": os.cpu_count(), "runs": rows, "collect_speedup": round(speedup, 3),
              "scaling_efficiency": round(speedup / 2, 3),
              "wall_speedup": round(min(rows[0]["wall_s"], rows[2]["wall_s"])
                                    / rows[1]["wall_s"], 3),
              "equality_2ranks_vs_1proc": equal, "equality_1proc_vs_1proc": noise}
    for row in rows:
        print(f"{row['procs']} proc × {row['threads_per_proc']} thread(s): wall "
              f"{row['wall_s']:.1f} s, collect {row['collect_s']:.2f} s")
    print(f"2 ranks vs 1 process (1 thread each): collect speedup {speedup:.2f}×, efficiency "
          f"{speedup / 2:.0%}\n  2 ranks vs 1 process: {equal}\n  1 process vs 1 process: "
          f"{noise}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
