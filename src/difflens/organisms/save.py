"""Write trained organism weights: a PEFT adapter or a full checkpoint, safetensors only."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from difflens.io.artifacts import read_json, read_tensors
from difflens.organisms.card import make_readable

ADAPTER_WEIGHTS = "adapter_model.safetensors"


def save_adapter(model: Any, directory: Path, base_id: str, dtype: str) -> None:
    """Save a PEFT model's adapter with weights cast to ``dtype``.

    peft writes its weights in the training dtype (fp32); the file is rewritten in ``dtype``
    because an fp16 rank-8 adapter is half the size, and peft casts it back when it loads the
    adapter into an fp32 model.  ``base_id`` goes into ``base_model_name_or_path`` so the adapter
    names the base it belongs to, not the local cache path it happened to be loaded from.
    """
    import torch
    from safetensors.torch import save_file

    model.peft_config["default"].base_model_name_or_path = base_id
    with warnings.catch_warnings():
        # With a hub id as base, peft looks for the base's config to see whether the vocabulary
        # changed; offline it warns and assumes not, which is right: we never train embeddings
        # unless asked to, and then peft saves them regardless.
        warnings.filterwarnings("ignore", message="Could not find a config file")
        warnings.filterwarnings("ignore", message="Unable to fetch remote file")
        model.save_pretrained(str(directory), safe_serialization=True)
    weights = directory / ADAPTER_WEIGHTS
    target = getattr(torch, dtype)
    tensors = {k: v.to(target).contiguous() for k, v in read_tensors(weights)[0].items()}
    save_file(tensors, str(weights), metadata={"format": "pt"})
    make_readable(weights)  # save_file creates 0600; the shipped adapter is package data
    # peft writes the base's local path into the README model card; drop that stub.
    (directory / "README.md").unlink(missing_ok=True)
    _check_base_id(directory, base_id)


def _check_base_id(directory: Path, base_id: str) -> None:
    config_path = directory / "adapter_config.json"
    config = read_json(config_path, fix="rebuild the organism", expect=dict)
    if config.get("base_model_name_or_path") != base_id:
        config["base_model_name_or_path"] = base_id
        config_path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def save_full_model(model: Any, tokenizer: Any, directory: Path, dtype: str) -> None:
    """Save a fully finetuned model (safetensors, weights in ``dtype``) and its tokenizer.

    difflens loads every model in the dtype the user asks for (fp32 by default), so the saved
    dtype only sets the file size.
    """
    import torch

    model.to(getattr(torch, dtype))
    model.save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))


def peak_rss_mb() -> float | None:
    """Peak resident memory of this process in MB (None where the OS does not report it)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)
