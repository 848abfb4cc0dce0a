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

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from difflens.errors import DifflensError
from difflens.io.artifacts import read_json, verify_safetensors
from difflens.options import option

EMBEDDED = "embedded"
_DTYPES = ("float32", "bfloat16", "float16")
DEVICE_HELP = "cpu, cuda, cuda:N, mps, or auto (device_map='auto' for big models)"


def check_device(device: str) -> None:
    """One line unless ``device`` names a device this machine has (cpu, cuda[:N], mps, auto)."""
    text = str(device)
    if text in ("cpu", "auto"):
        return
    if not re.fullmatch(r"cuda(:\d+)?|mps", text):
        raise DifflensError(f"unknown device {text!r}; use cpu, cuda, cuda:N, mps or auto "
                            "(e.g. --device cpu)")
    import torch

    if text == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise DifflensError("--device mps: no Apple GPU (MPS) is available on this machine; "
                                "use --device cpu")
        return
    if not torch.cuda.is_available():
        raise DifflensError(f"--device {text}: no GPU (CUDA) is visible on this machine; use "
                            "--device cpu")
    index = int(text.partition(":")[2] or 0)
    if index >= torch.cuda.device_count():
        raise DifflensError(f"--device {text}: this machine has {torch.cuda.device_count()} "
                            f"CUDA device(s); use cuda:0 to cuda:{torch.cuda.device_count() - 1}")


@dataclass(frozen=True)
class LoadOptions:
    """How to load a model (the model flags of every command that loads one)."""

    dtype: str = option("float32", choices=_DTYPES, help="dtype the models run in")
    device: str = option("cpu", help=DEVICE_HELP, check=check_device)
    allow_pickle: bool = option(
        False, help="accept .bin/.pt checkpoints (pickle can run code: trusted files only)")
    trust_remote_code: bool = option(False, help="allow models that ship their own Python code")

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


def read_config_json(path: Path, what: str) -> dict[str, Any]:
    """A model-side JSON file (config.json, adapter_config.json, card.json) as a dict, or one
    line naming the file."""
    if not path.exists():
        raise DifflensError(f"{path} does not exist; is {path.parent} a {what}?")
    return read_json(path, fix=f"repair or re-create this {what}", expect=dict)


def _check_remote_code(config_path: Path, trust_remote_code: bool) -> None:
    config = read_config_json(config_path, "model directory")
    if config.get("auto_map") and not trust_remote_code:
        raise DifflensError(
            f"the model at {config_path.parent} needs its own Python code (auto_map in "
            "config.json); difflens does not run remote code unless you pass "
            "--trust-remote-code"
        )


def check_gguf(path: Path) -> None:
    """One line unless ``path`` is a complete GGUF file: the header parses and every tensor's
    data lies inside the file (a truncated download otherwise fails deep in transformers)."""
    try:
        from gguf import GGUFReader
    except ImportError:  # transformers will say what to install
        return
    try:
        reader = GGUFReader(str(path))
        size = path.stat().st_size
        for tensor in reader.tensors:
            if int(tensor.data_offset) + int(tensor.n_bytes) > size:
                raise ValueError(f"tensor {tensor.name} ends past the end of the file")
    except (ValueError, OSError, KeyError, IndexError, TypeError, AssertionError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DifflensError(f"{path} is not a valid GGUF file ({first}); it may be truncated: "
                            "re-download it") from None


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def check_model_source(source: str | os.PathLike | None) -> None:
    """The cheap checks of a model source, before anything loads: the path exists and is of a
    known kind, and its small JSON files (adapter_config.json, card.json) and GGUF header
    parse."""
    kind, location = resolve_source(source)
    if kind == "adapter":
        read_config_json(Path(location) / "adapter_config.json", "PEFT adapter directory")
    elif kind == "organism":
        read_config_json(Path(location) / "card.json", "organism directory")
    elif kind == "dir":
        read_config_json(Path(location) / "config.json", "model directory")
    elif kind == "gguf":
        check_gguf(Path(location))


@dataclass(frozen=True)
class ModelSources:
    """The two models of a pair, as every command that loads one takes them."""

    base: str | None = option(
        None, check=check_model_source,
        help="base model: 'embedded' (default), a model dir, a .gguf file or hub id")
    finetuned: str | None = option(
        None, check=check_model_source,
        help="finetuned model: a PEFT adapter dir, organism dir, model dir, .gguf or hub id "
             "(default: the shipped cake_bake organism)")


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
    check_device(options.device)  # before any weights are read
    kind, location = resolve_source(source)
    if kind == "gguf":
        check_gguf(Path(location))
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
