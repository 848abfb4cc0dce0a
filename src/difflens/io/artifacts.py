"""Atomic artifact files and resumable run directories.

Every file is written to a temporary sibling and ``os.replace``-d into place, so a run killed at
any moment leaves either the previous complete file or none.  A stage is finished when its
marker entry exists in ``stages.json``; re-running with the same configuration skips finished
stages, and a directory made with other settings is refused rather than mixed
(:func:`check_same_settings`, the one such check: run directories, activation caches and
dictionary training runs all use it).  :func:`read_optional_json` is the one reader of an
artifact that may be absent.
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


def read_json(path: Path | str, *, what: str = "", fix: str = "delete it to recompute",
              expect: type | None = None) -> Any:
    """The JSON in ``path``: the one reader of difflens' JSON files (artifacts, configs, cards).

    A missing, unreadable or malformed file is one :class:`DifflensError` line naming the file
    (``what``, e.g. ``"organism card"``, says what it is) and ``fix``, what to do about it;
    ``expect=dict`` also refuses another JSON type (a list where an object belongs)."""
    path = Path(path)
    label = f"{what} {path}" if what else str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DifflensError(f"{label} does not exist; {fix}") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise DifflensError(f"cannot read {label} ({reason}); {fix}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DifflensError(f"{label} is not valid JSON ({exc}); {fix}") from None
    if expect is not None and not isinstance(data, expect):
        kind = "a JSON object" if expect is dict else f"JSON of type {expect.__name__}"
        raise DifflensError(f"{label} is not {kind}; {fix}")
    return data


def read_optional_json(path: Path, **kw: Any) -> Any:
    """The JSON in ``path``, or None when there is no such file (a stage that did not run).

    A file that exists but does not parse is an error (one line), never read as absent;
    keywords as :func:`read_json`."""
    return read_json(path, **kw) if Path(path).is_file() else None


def read_run_summary(run: Path, what: str, command: str, required: dict[str, type],
                     file: str = "summary.json") -> dict[str, Any]:
    """The summary of a finished run, for a method's result class to read.

    ``what`` names the method ("Diff Mining"), ``command`` its subcommand ("mine") and
    ``required`` the keys a summary must hold with their types (``{"promoted": list}``).  No
    file, a file that does not parse, or one without the required keys is a one-line
    :class:`DifflensError` naming the directory and saying how to re-run.
    """
    try:
        data = read_optional_json(run / file)
    except DifflensError:
        data = "not valid JSON"
    article = "an" if what[:1].lower() in "aeiou" else "a"
    if data is None:
        raise DifflensError(f"{run} is not a finished {what} run (no {file}); re-run "
                            f"`difflens {command} --out {run}` to finish it")
    missing = [key for key, kind in required.items()
               if not isinstance(data, dict) or not isinstance(data.get(key), kind)]
    if missing:
        why = data if isinstance(data, str) else f"no {', '.join(missing)}"
        raise DifflensError(f"{run} holds {article} {what} run whose {file} cannot be read "
                            f"({why}); it is corrupt or from an older difflens: re-run "
                            f"`difflens {command}` into a fresh --out directory")
    return data


def timed_stage(timings: dict[str, float], name: str, compute: Callable[[], T]
                ) -> Callable[[], T]:
    """``compute`` wrapped to record its seconds in ``timings[name]``: a runner hands it to
    :meth:`RunDir.stage`, so only stages computed now are timed (reused ones keep theirs)."""
    import time

    def wrapped() -> T:
        start = time.perf_counter()
        value = compute()
        timings[name] = round(time.perf_counter() - start, 3)
        return value

    return wrapped


def known_fields(cls: type, data: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments for the dataclass ``cls``: ``defaults`` for the fields a summary
    lacks (older or hand-assembled runs), then the summary's values; unknown keys dropped."""
    from dataclasses import fields

    known = {f.name for f in fields(cls)}
    return {**defaults, **{k: v for k, v in data.items() if k in known}}


def write_tensors(path: Path, tensors: dict[str, Any], metadata: dict[str, str] | None = None):
    """Atomically write a safetensors file (tensors made contiguous and moved to CPU)."""
    clean = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
    atomic_write_bytes(path, safetensors_bytes(clean, metadata))


def safetensors_bytes(tensors: dict[str, Any], metadata: dict[str, str] | None = None) -> bytes:
    """A safetensors file's bytes with the metadata keys in sorted order.

    The safetensors library writes metadata in hash-map order, which differs between
    processes: the same run would give files differing in their header.  Here the header is
    rebuilt with ``__metadata__`` sorted (tensor entries and data untouched), so equal tensors
    and metadata give byte-identical files.  Keep timings out of ``metadata`` for the same
    reason."""
    from safetensors.torch import save

    blob = save(tensors)
    if not metadata:
        return blob
    size = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8: 8 + size])
    header = {"__metadata__": {k: str(metadata[k]) for k in sorted(metadata)}, **header}
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)  # the format pads the header to 8 bytes with spaces
    return len(text).to_bytes(8, "little") + text + blob[8 + size:]


def read_tensors(path: Path | str, *, what: str = "", fix: str = "re-download or rebuild it"
                 ) -> tuple[dict[str, Any], dict[str, str]]:
    """``(tensors, metadata)`` of a safetensors file: the one reader of difflens' safetensors
    files, verified first, every failure one line naming the file (``what``, ``fix``: as
    :func:`read_json`)."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    verify_safetensors(path, what=what, fix=fix)
    try:
        with safe_open(str(path), framework="pt") as fh:
            tensors = {name: fh.get_tensor(name) for name in fh.keys()}  # noqa: SIM118
            return tensors, dict(fh.metadata() or {})
    except (SafetensorError, OSError) as exc:
        raise DifflensError(_not_safetensors(path, what, _one_line(exc), fix)) from None


def verify_safetensors(file: Path, *, what: str = "", fix: str = "re-download or rebuild it"
                       ) -> None:
    """Check that a safetensors file's header parses and its size matches; one-line error."""
    try:
        size = file.stat().st_size
        with open(file, "rb") as fh:
            header_len = int.from_bytes(fh.read(8), "little")
            if header_len <= 0 or header_len > size - 8:
                raise ValueError("bad header length")
            header = json.loads(fh.read(header_len))
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"),
                  default=0)
        if 8 + header_len + end != size:
            raise ValueError(f"expected {8 + header_len + end} bytes, found {size}")
    except FileNotFoundError:
        label = f"{what} {file}" if what else str(file)
        raise DifflensError(f"{label} does not exist; {fix}") from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as exc:
        raise DifflensError(_not_safetensors(file, what, _one_line(exc), fix)) from None


def _not_safetensors(file: Path, what: str, reason: str, fix: str) -> str:
    where = f"{what} at {file} is unreadable: it is" if what else f"{file} is"
    return f"{where} not a valid safetensors file ({reason}); {fix}"


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200] or type(exc).__name__


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


def check_same_settings(path: Path | str, recorded: dict[str, Any], current: dict[str, Any],
                        what: str) -> None:
    """Refuse a directory made with other settings: a one-line :class:`DifflensError` naming the
    differing keys when ``recorded`` (read back from ``path``) differs from ``current``.

    ``current`` is compared as it would be written to JSON (tuples are lists, paths strings);
    ``what`` names what ``path`` holds instead, e.g. ``"a different adl"``.
    """
    current = json.loads(json.dumps(current, default=_json_default))
    differ = sorted(k for k in set(recorded) | set(current) if recorded.get(k) != current.get(k))
    if differ:
        raise DifflensError(f"{path} holds {what} (differs in: {', '.join(differ)}); "
                            "choose another --out directory or delete it")


def same_run(path: Path | str, config: dict[str, Any], kind: str) -> bool:
    """True when ``path`` holds a run of ``kind`` made with ``config``, False when it holds no
    run (or only a failed one, with nothing finished); a run made with other arguments raises a
    one-line :class:`DifflensError`."""
    meta_path = Path(path) / "run.json"
    if not meta_path.exists():
        return False
    old = read_json(meta_path)
    try:
        check_same_settings(path, {"kind": old.get("kind"), **(old.get("config") or {})},
                            {"kind": kind, **config}, f"a different {old.get('kind', 'run')}")
    except DifflensError:
        if holds_results(path):
            raise
        return False  # a run that failed before finishing anything: the rerun takes it over
    return True


def holds_results(path: Path | str) -> bool:
    """Whether a run directory holds anything finished (a stage marker or a summary)."""
    stages = read_optional_json(Path(path) / "stages.json") or {}
    return any(not name.startswith("_") for name in stages) or \
        (Path(path) / "summary.json").exists()


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
        return read_optional_json(self._stages_path) or {}

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
