"""Launching a difflens command under torchrun for the data-parallel tests (2 gloo ranks)."""

from __future__ import annotations

import os
import subprocess
import sys

from difflens import distributed as dd


def torchrun(args: list[str], **env: str) -> subprocess.CompletedProcess:
    """``python -m torch.distributed.run --standalone --nproc_per_node 2 -m difflens.cli ARGS``:
    one thread per process, a free rendezvous port (concurrent test runs do not collide), a
    60 s collective timeout, and the failure hooks only when ``env`` sets them."""
    environ = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
               dd.TIMEOUT_ENV: "60", **env}
    for name in (dd.FAIL_RANK_ENV, dd.FAIL_MODE_ENV):
        if name not in env:
            environ.pop(name, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", "-m", "difflens.cli", *args]
    return subprocess.run(cmd, env=environ, capture_output=True, text=True, timeout=240)


def error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    """The ``difflens: error:`` lines a run printed (a failure must print exactly one)."""
    return [line for line in proc.stderr.splitlines() if "difflens: error:" in line]
