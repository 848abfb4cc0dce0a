"""Benchmark: the whole ADL run on the embedded pair, stage by stage, plus the steering search.

    python benchmarks/adl.py [--n-texts 2000] [--out runs/bench-adl]

Runs `difflens adl` with the CPU defaults into a fresh run directory (first run: every stage
computed), prints the seconds per stage (collection, logit lens, Patchscope, steering search and
final generation, relevance, similarity, causal) and the share of the total, then re-runs the
same command to show that finished stages are reused (target: a rerun in seconds).  The steering
search's batched look-ahead against a sequential one-strength-at-a-time search (same decisions,
generated tokens and time) is `benchmarks/steering_search.py`, which this script runs last.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-texts", type=int, default=None, help="default: the CPU default (2000)")
    ap.add_argument("--out", default="runs/bench-adl")
    ap.add_argument("--skip-steering-bench", action="store_true")
    args = ap.parse_args()

    from difflens.api import run_adl
    from difflens.methods.adl.config import ADLConfig
    from difflens.models.pair import ModelPair

    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    pair = ModelPair.load()
    load_s = time.perf_counter() - start
    config = ADLConfig(n_texts=args.n_texts)
    start = time.perf_counter()
    summary = run_adl(config, out, pair=pair, progress=False)
    first = time.perf_counter() - start
    start = time.perf_counter()
    run_adl(config, out, pair=pair, progress=False)
    rerun = time.perf_counter() - start

    timings = summary["timings"]
    total = sum(timings.values())
    print(f"ADL on the embedded pair, {summary['n_texts']} texts, layer {summary['layer']}")
    print(f"  model load {load_s:7.1f} s")
    for stage, seconds in timings.items():
        print(f"  {stage:<11}{seconds:7.1f} s  {100 * seconds / total:5.1f} %")
    print(f"  total      {first:7.1f} s (first run; stage sum {total:.1f} s)")
    print(f"  rerun      {rerun:7.1f} s  = {rerun / first:.3f}x of the first run (stages reused)")
    if not args.skip_steering_bench:
        here = Path(__file__).parent / "steering_search.py"
        subprocess.run([sys.executable, str(here)], check=False)


if __name__ == "__main__":
    main()
