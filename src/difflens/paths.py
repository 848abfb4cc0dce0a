"""Where difflens keeps what it builds once and reuses (dequantised models, ...).

The cache root is ``$DIFFLENS_CACHE`` when set, else ``~/.cache/difflens``.  It is checked for
writability up front so that a read-only location fails with one clear line instead of a
traceback half-way through a conversion.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from difflens.errors import DifflensError


def cache_root() -> Path:
    """The cache directory (``$DIFFLENS_CACHE`` or ``~/.cache/difflens``), not created."""
    env = os.environ.get("DIFFLENS_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "difflens"


def writable_dir(path: Path, what: str = "cache directory") -> Path:
    """Create ``path`` if needed and prove it is writable, or raise a one-line error."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as exc:
        hint = " (set DIFFLENS_CACHE to a writable directory)" if what == "cache directory" else ""
        raise DifflensError(
            f"{what} {path} is not writable: {exc.strerror or exc}{hint}"
        ) from None
    return path
