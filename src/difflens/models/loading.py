"""Load one causal LM (and its tokenizer) from wherever a user keeps it, safely.

Sources, in the order they are recognised:
  * ``"embedded"`` (or ``None``): the embedded gemma-3-270m base (see :mod:`embedded`);
  * a ``.gguf`` file: dequantised by transformers;
  * a local transformers directory (``config.json``);
  * anything else: a Hugging Face hub id (offline: a one-line error naming the id).
PEFT adapter directories are handled by :mod:`difflens.models.pair`, which needs the base.

Safety: weights load from safetensors only; a directory that holds only pickle checkpoints
(``.bin``/``.pt``) is refused unless ``allow_pickle`` is set, and a model that needs remote code
is refused unless ``trust_remote_code`` is set.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from difflens.errors import DifflensError

EMBEDDED = "embedded"
_DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class LoadOptions:
    """How to load a model."""

    dtype: str = "float32"  # one of float32, bfloat16, float16
    device: str = "cpu"  # "cpu", "cuda", "cuda:1", "mps", or "auto" (device_map="auto")
    allow_pickle: bool = False  # accept .bin/.pt checkpoints (unsafe: pickle can run code)
    trust_remote_code: bool = False  # run model code shipped with a hub repo

    def torch_dtype(self) -> Any:
        import torch

        if self.dtype not in _DTYPES:
            raise DifflensError(f"unknown dtype {self.dtype!r}; use one of {', '.join(_DTYPES)}")
        return getattr(torch, self.dtype)


def is_adapter_dir(path: Path) -> bool:
    return path.is_dir() and (path / "adapter_config.json").exists()


def check_safetensors_dir(path: Path, allow_pickle: bool, pattern: str = "model") -> None:
    """Refuse pickle-only or corrupt checkpoints in ``path`` with a one-line error."""
    safes = sorted(path.glob("*.safetensors"))
    pickles = [p for p in path.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt")]
    if not safes and pickles and not allow_pickle:
        raise DifflensError(
            f"{path} holds only pickle checkpoints ({pickles[0].name}); pickle can run arbitrary "
            "code, so difflens refuses it: convert it to safetensors, or pass --allow-pickle "
            "if you trust its source"
        )
    for file in safes:
        verify_safetensors(file)


def verify_safetensors(file: Path) -> None:
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
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise DifflensError(
            f"{file} is not a valid safetensors file ({exc}); re-download or rebuild it"
        ) from None


def _check_remote_code(config_path: Path, trust_remote_code: bool) -> None:
    config = json.loads(config_path.read_text(encoding="utf-8"))
    if config.get("auto_map") and not trust_remote_code:
        raise DifflensError(
            f"the model at {config_path.parent} needs its own Python code (auto_map in "
            "config.json); difflens does not run remote code unless you pass "
            "--trust-remote-code"
        )


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def resolve_source(source: str | os.PathLike | None) -> tuple[str, Path | str]:
    """Classify a model source: ``("embedded"|"gguf"|"dir"|"adapter"|"hub", location)``."""
    if source is None or str(source) == EMBEDDED:
        return "embedded", EMBEDDED
    path = Path(source).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise DifflensError(f"GGUF file {path} does not exist; check the path")
        return "gguf", path
    if path.exists():
        if is_adapter_dir(path):
            return "adapter", path
        if (path / "card.json").exists():
            return "organism", path
        if path.is_dir() and (path / "config.json").exists():
            return "dir", path
        raise DifflensError(
            f"{path} is neither a transformers model directory (config.json), a PEFT adapter "
            "directory (adapter_config.json), a difflens organism (card.json) nor a .gguf file"
        )
    text = str(source)
    if text.startswith((".", "/", "~")) or text.count("/") > 1:
        raise DifflensError(f"model path {text} does not exist; check the path")
    return "hub", text


def load_causal_lm(source: str | os.PathLike | None, options: LoadOptions) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` in eval mode from a non-adapter source.

    ``device="auto"`` passes ``device_map="auto"`` through to transformers (accelerate), for
    models larger than one device.
    """
    kind, location = resolve_source(source)
    if kind == "embedded":
        from difflens.models.embedded import embedded_base_dir

        kind, location = "dir", embedded_base_dir()
    if kind in ("adapter", "organism"):
        raise DifflensError(
            f"{location} is an adapter/organism, not a full model; pass it as the finetuned "
            "model of a pair"
        )
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {"dtype": options.torch_dtype()}
    if options.device == "auto":
        kwargs["device_map"] = "auto"
    kwargs["trust_remote_code"] = options.trust_remote_code
    if kind == "gguf":
        path = Path(location)
        load_from, kwargs["gguf_file"] = str(path.parent), path.name
        tok_kwargs = {"gguf_file": path.name}
    elif kind == "dir":
        path = Path(location)
        _check_remote_code(path / "config.json", options.trust_remote_code)
        check_safetensors_dir(path, options.allow_pickle)
        load_from, tok_kwargs = str(path), {}
        kwargs["use_safetensors"] = not options.allow_pickle or any(path.glob("*.safetensors"))
    else:
        load_from, tok_kwargs = str(location), {}
        kwargs["use_safetensors"] = not options.allow_pickle
    try:
        model = AutoModelForCausalLM.from_pretrained(load_from, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(
            load_from, trust_remote_code=options.trust_remote_code, **tok_kwargs
        )
    except OSError as exc:
        if kind == "hub":
            why = "offline (HF_HUB_OFFLINE=1) and not in the local cache" if _hub_offline() \
                else f"could not be fetched ({str(exc).splitlines()[0]})"
            raise DifflensError(
                f"model {location} is {why}; download it first or pass a local directory"
            ) from None
        raise DifflensError(f"could not load model from {location}: {str(exc).splitlines()[0]}") \
            from None
    except ValueError as exc:
        message = str(exc).splitlines()[0]
        if "trust_remote_code" in message:
            raise DifflensError(
                f"model {location} needs its own Python code; pass --trust-remote-code to allow it"
            ) from None
        raise DifflensError(f"could not load model from {location}: {message}") from None
    if options.device not in ("cpu", "auto"):
        model = model.to(options.device)
    model.eval()
    model.requires_grad_(False)
    return model, tokenizer
