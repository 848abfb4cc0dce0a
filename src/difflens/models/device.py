"""Where a run computes: the one definition of "is this a GPU run?".

Device-dependent defaults (corpus sizes, batch sizes, generated tokens, causal-test sizes) are
chosen by :func:`is_gpu`.  Only CUDA counts: on Apple's MPS and on the CPU the smaller CPU
defaults apply.  Imports nothing heavy, so a CLI can ask it about a ``--device`` string.
"""

from __future__ import annotations

from typing import Any


def is_gpu(device: Any) -> bool:
    """True for a CUDA device (``"cuda"``, ``"cuda:1"``, ``torch.device("cuda", 0)``)."""
    return str(device).split(":", 1)[0] == "cuda"
