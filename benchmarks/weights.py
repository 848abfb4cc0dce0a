"""Weight-space lens: the LoRA factor path (QR of the thin factors + an r × r SVD) against the
naive baseline (form ΔW = s·B·A densely, then its thin SVD), on the shipped cake_bake adapter.

Each path runs in a fresh process, so its peak RSS (VmHWM) is its own.  Both first read every
factor of the adapter (the same in both), then the timed loop computes the SVD of each module's
ΔW; the memory figure is the growth of the peak during that loop (what the path itself
allocates), beside the analytic size of the largest tensor each path forms.  Usage::

    python benchmarks/weights.py                 # all 126 modules of the shipped adapter
    python benchmarks/weights.py --modules 14 --repeats 1      # small: proves it runs
    python benchmarks/weights.py --big           # also one synthetic 4096 × 14336, r = 16 module
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

from _measure import emit, peak_rss_mb, run_mode


def _factors(n_modules: int) -> list[tuple[str, object, object, float]]:
    from difflens.methods.weights.diff import Adapter
    from difflens.models.pair import default_organism_dir

    adapter = Adapter(default_organism_dir() / "adapter")
    keys = sorted(k for k in adapter.keys if ".lora_A." in k)[:n_modules]
    out = []
    for a_key in keys:
        b_key = a_key.replace(".lora_A.", ".lora_B.")
        A, B = adapter.get(a_key).float(), adapter.get(b_key).float()
        out.append((a_key, A, B, adapter.scale(a_key, int(A.shape[0]))))
    return out


def _synthetic(d_out: int, d_in: int, r: int) -> list[tuple[str, object, object, float]]:
    import torch

    torch.manual_seed(0)
    return [("synthetic", torch.randn(r, d_in) / d_in ** 0.5, torch.randn(d_out, r) / r, 2.0)]


def mode(path: str, n_modules: int, repeats: int, big: bool) -> dict:
    import torch

    from difflens.methods.weights.core import lora_delta_svd

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    factors = _synthetic(4096, 14336, 16) if big else _factors(n_modules)
    largest = max(B.shape[0] * A.shape[1] for _, A, B, _ in factors)
    largest_thin = max((B.shape[0] + A.shape[1]) * A.shape[0] for _, A, B, _ in factors)
    _, A0, B0, s0 = factors[0]  # warm-up: first LAPACK calls pay one-off set-up costs
    lora_delta_svd(A0, B0, s0) if path == "factor" else torch.linalg.svd(s0 * (B0 @ A0))
    before = peak_rss_mb()
    start = time.perf_counter()
    sigma = []
    for _ in range(repeats):
        sigma = []
        for _, A, B, scale in factors:
            if path == "factor":
                svd = lora_delta_svd(A, B, scale)
            else:
                # The naive baseline: form ΔW, then LAPACK's thin SVD of it.
                svd = torch.linalg.svd(scale * (B @ A), full_matrices=False)
            sigma.append(float(svd.S[0]))
    seconds = (time.perf_counter() - start) / repeats
    return {"path": path, "modules": len(factors), "seconds": seconds,
            "peak_growth_mb": peak_rss_mb() - before, "rss_mb": peak_rss_mb(),
            "largest_tensor_mb": (largest * 4 if path == "dense" else largest_thin * 8) / 2**20,
            "sigma1_sum": sum(sigma)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=["factor", "dense"])
    ap.add_argument("--modules", type=int, default=126)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--big", action="store_true")
    ap.add_argument("--synthetic", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.mode:
        emit(mode(args.mode, args.modules, args.repeats, args.synthetic))
        return
    here = str(Path(__file__))
    cases = [("shipped cake_bake adapter", [])]
    if args.big:
        cases.append(("synthetic 4096 × 14336, r = 16", ["--synthetic"]))
    for title, extra in cases:
        common = ["--modules", str(args.modules), "--repeats", str(args.repeats), *extra]
        fac = run_mode(here, "factor", *common)
        den = run_mode(here, "dense", *common)
        print(f"{title}: {fac['modules']} modules, mean of {args.repeats} repeats")
        for r, name in ((fac, "factor (QR + r×r SVD)"), (den, "dense ΔW + thin SVD")):
            print(f"  {name:<24} {r['seconds']:8.4f} s   peak growth {r['peak_growth_mb']:7.1f} "
                  f"MiB   largest tensor {r['largest_tensor_mb']:8.2f} MiB   "
                  f"(peak RSS {r['rss_mb']:.0f} MiB)")
        print(f"  dense / factor time   = {den['seconds'] / fac['seconds']:.1f}x")
        print(f"  largest tensor ratio  = "
              f"{den['largest_tensor_mb'] / fac['largest_tensor_mb']:.1f}x")
        agree = abs(fac["sigma1_sum"] - den["sigma1_sum"]) / den["sigma1_sum"]
        print(f"  Σσ₁ agree to          {agree:.1e} (relative)")


if __name__ == "__main__":
    main()
