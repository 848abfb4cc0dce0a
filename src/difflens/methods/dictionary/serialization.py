"""Atomic safetensors / JSON files and state-shape checks (no pickle anywhere).

Writes and reads go through :mod:`difflens.io.artifacts`: every write lands in a temporary file
in the destination directory and is moved into place with ``os.replace`` (a crash leaves the old
file or the new one, never half a file); safetensors metadata is written in sorted key order and
JSON with sorted keys, so the same training run gives byte-identical files (nothing here records
a time); every read turns a missing or malformed file into one line naming it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from difflens.errors import DifflensError
from difflens.io import artifacts
from difflens.io.artifacts import atomic_write_bytes

__all__ = ["atomic_write_bytes", "check_state", "load_tensors", "read_json", "save_tensors",
           "to_device", "write_json"]


def write_json(path: Path, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON with sorted keys."""
    atomic_write_bytes(Path(path), (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def read_json(path: Path, what: str) -> dict[str, Any]:
    """Read a JSON object; a missing or corrupt file is a :class:`DifflensError`."""
    path = Path(path)
    if not path.is_file():
        raise DifflensError(f"{what} not found at {path}; check the path")
    return artifacts.read_json(path, what=what, fix="re-create it", expect=dict)


def save_tensors(path: Path, tensors: Mapping[str, Tensor], metadata: dict[str, str]) -> None:
    """Atomically write ``tensors`` (moved to CPU, made contiguous) as safetensors, metadata in
    a fixed key order."""
    artifacts.write_tensors(Path(path), dict(tensors), metadata)


def load_tensors(path: Path, what: str) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Read a safetensors file: ``(tensors on CPU, metadata)``."""
    path = Path(path)
    if not path.is_file():
        raise DifflensError(f"{what} not found at {path}; check the path")
    return artifacts.read_tensors(path, what=what, fix="re-create it")


def check_state(
    expected: Mapping[str, Tensor], found: Mapping[str, Tensor], where: Path, hint: str
) -> None:
    """Raise if ``found`` lacks/adds tensors or a shape/dtype differs from ``expected``."""
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    if missing or extra:
        raise DifflensError(
            f"{where} does not match its config (missing: {', '.join(missing) or '-'}; "
            f"unexpected: {', '.join(extra) or '-'}); {hint}"
        )
    for name, ref in expected.items():
        got = found[name]
        if tuple(got.shape) != tuple(ref.shape) or got.dtype != ref.dtype:
            raise DifflensError(
                f"{where}: tensor {name} has shape {tuple(got.shape)} ({got.dtype}) but the "
                f"config implies {tuple(ref.shape)} ({ref.dtype}); {hint}"
            )


def to_device(tensors: Mapping[str, Tensor], device: torch.device | str) -> dict[str, Tensor]:
    """Move every tensor of a mapping to ``device``."""
    return {name: t.to(device) for name, t in tensors.items()}
