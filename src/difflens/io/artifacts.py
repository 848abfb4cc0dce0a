"""Atomic artifact files and resumable run directories.

Every file is written to a temporary sibling and ``os.replace``-d into place, so a run killed at
any moment leaves either the previous complete file or none.  A stage is finished when its
marker entry exists in ``stages.json``; re-running with the same configuration skips finished
stages, and a run directory made with a different configuration is refused rather than mixed.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from difflens.errors import DifflensError
from difflens.paths import writable_dir

T = TypeVar("T")
FORMAT_VERSION = 1


def _file_mode() -> int:
    # mkstemp creates 0600 files; give artifacts the permissions a plain open() would.
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (tmp file in the same directory + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: Any) -> None:
    """Atomically write ``obj`` as pretty JSON (UTF-8, non-ASCII kept)."""
    text = json.dumps(obj, indent=2, ensure_ascii=False, default=_json_default)
    atomic_write_bytes(path, (text + "\n").encode("utf-8"))


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DifflensError(f"cannot read {path} ({exc}); delete it to recompute") from None


def write_tensors(path: Path, tensors: dict[str, Any], metadata: dict[str, str] | None = None):
    """Atomically write a safetensors file (tensors made contiguous and moved to CPU)."""
    from safetensors.torch import save

    clean = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
    atomic_write_bytes(path, save(clean, metadata=metadata))


def read_tensors(path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """``(tensors, metadata)`` of a safetensors file, verified first (one-line error)."""
    from safetensors import safe_open

    from difflens.models.loading import verify_safetensors

    verify_safetensors(path)
    with safe_open(str(path), framework="pt") as fh:
        return {name: fh.get_tensor(name) for name in fh.keys()}, dict(fh.metadata() or {})  # noqa: SIM118


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def config_hash(config: dict[str, Any]) -> str:
    """A short stable hash of a JSON-able configuration."""
    blob = json.dumps(config, sort_keys=True, default=_json_default).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def same_run(path: Path | str, config: dict[str, Any], kind: str) -> bool:
    """True when ``path`` holds a run of ``kind`` made with ``config``, False when it holds no
    run; a run made with other arguments raises a one-line :class:`DifflensError`."""
    meta_path = Path(path) / "run.json"
    if not meta_path.exists():
        return False
    old = read_json(meta_path)
    if old.get("config_hash") != config_hash(config) or old.get("kind") != kind:
        raise DifflensError(
            f"{path} holds a different {old.get('kind', 'run')} (other arguments); "
            "choose another --out directory or delete it"
        )
    return True


class RunDir:
    """A directory of one run's artifacts with resumable stages.

    ``config`` identifies the run; opening an existing directory with a different config is an
    error (one line) rather than silently mixing results of two runs.
    """

    def __init__(self, path: Path | str, config: dict[str, Any], kind: str) -> None:
        self.path = writable_dir(Path(path), what="run directory")
        self.kind = kind
        if not same_run(self.path, config, kind):
            write_json(self.path / "run.json", {"kind": kind, "format_version": FORMAT_VERSION,
                                                "config": config,
                                                "config_hash": config_hash(config)})
        self.config = config

    @property
    def _stages_path(self) -> Path:
        return self.path / "stages.json"

    def finished(self) -> dict[str, Any]:
        return read_json(self._stages_path) if self._stages_path.exists() else {}

    def is_done(self, stage: str) -> bool:
        return stage in self.finished()

    def mark_done(self, stage: str, info: dict[str, Any] | None = None) -> None:
        stages = self.finished()
        stages[stage] = info or {}
        write_json(self._stages_path, stages)

    def stage(self, name: str, compute: Callable[[], T], save: Callable[[T], None],
              load: Callable[[], T]) -> T:
        """Run ``compute`` + ``save`` unless ``name`` is finished, else ``load`` it."""
        if self.is_done(name):
            return load()
        value = compute()
        save(value)
        self.mark_done(name)
        return value
