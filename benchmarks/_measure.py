"""Shared benchmark plumbing: run a mode in a fresh process and read its time and peak RSS."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def peak_rss_mb() -> float:
    """This process's peak resident set size (VmHWM) in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_mode(script: str, mode: str, *args: str) -> dict:
    """Run ``script --mode MODE ARGS`` in a new interpreter; it prints one JSON line last."""
    proc = subprocess.run([sys.executable, script, "--mode", mode, *args],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"mode {mode} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def emit(result: dict) -> None:
    print(json.dumps(result))


def fit_line(points: list[tuple[float, float]]) -> tuple[float, float] | None:
    """Least squares ``y = F + r × x`` over ``(x, y)`` points, e.g. the cost of a decoding step
    against its rows; None without two distinct ``x``."""
    import torch

    if len({x for x, _ in points}) < 2:
        return None
    xs = torch.tensor([[1.0, x] for x, _ in points], dtype=torch.float64)
    ys = torch.tensor([[y] for _, y in points], dtype=torch.float64)
    fixed, slope = torch.linalg.lstsq(xs, ys).solution.flatten().tolist()
    return fixed, slope
