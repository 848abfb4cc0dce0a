"""Atomic safetensors / JSON files and state-shape checks (no pickle anywhere).

Every write goes to a temporary file in the destination directory and is moved into place with
``os.replace``, so a crash leaves either the old file or the new one, never half a file.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_bytes
from torch import Tensor

from difflens.errors import DifflensError


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary sibling file and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def read_json(path: Path, what: str) -> dict[str, Any]:
    """Read a JSON object; a missing or corrupt file is a :class:`DifflensError`."""
    path = Path(path)
    if not path.is_file():
        raise DifflensError(f"{what} not found at {path}; check the path")
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise DifflensError(f"{what} at {path} is not valid JSON ({err}); re-create it") from err
    if not isinstance(obj, dict):
        raise DifflensError(f"{what} at {path} is not a JSON object; re-create it")
    return obj


def save_tensors(path: Path, tensors: Mapping[str, Tensor], metadata: dict[str, str]) -> None:
    """Atomically write ``tensors`` (moved to CPU, made contiguous) as safetensors."""
    cpu = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
    atomic_write_bytes(path, safetensors_bytes(cpu, metadata=metadata))


def load_tensors(path: Path, what: str) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Read a safetensors file: ``(tensors on CPU, metadata)``."""
    path = Path(path)
    if not path.is_file():
        raise DifflensError(f"{what} not found at {path}; check the path")
    try:
        with safe_open(str(path), framework="pt") as f:
            tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118
            metadata = dict(f.metadata() or {})
    except (SafetensorError, OSError) as err:
        raise DifflensError(f"{what} at {path} is unreadable ({err}); re-create it") from err
    return tensors, metadata


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
