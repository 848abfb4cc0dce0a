"""Resumable trainer checkpoints: ``<root>/step_000001000/{state.safetensors, trainer.json}``.

``state.safetensors`` holds every tensor needed to continue bit-exactly: the dictionary's state
dict (``model.*``: parameters, normalisation, threshold θ, dead-latent counters) and Adam's
moments (``optim.<param>.<name>``).  ``trainer.json`` holds the step, the configs and Adam's
hyper-parameters.  Each file is written atomically (temporary file + ``os.replace``); the JSON is
written last, so a checkpoint directory without it is incomplete and ignored, and the step is
stored in both files and must agree.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import torch

from difflens.errors import DifflensError
from difflens.methods.dictionary.dictionary import SparseDictionary
from difflens.methods.dictionary.serialization import (
    check_state,
    load_tensors,
    read_json,
    save_tensors,
    write_json,
)

FORMAT = "difflens-dictionary-checkpoint"
FORMAT_VERSION = 1
STATE_FILE = "state.safetensors"
TRAINER_FILE = "trainer.json"
_STEP_DIR = re.compile(r"^step_(\d+)$")


def checkpoint_dir(root: Path, step: int) -> Path:
    return Path(root) / f"step_{step:09d}"


def _complete_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """``(step, dir)`` of directories holding both files, ascending by step."""
    found = []
    if Path(root).is_dir():
        for child in Path(root).iterdir():
            match = _STEP_DIR.match(child.name)
            if match and (child / TRAINER_FILE).is_file() and (child / STATE_FILE).is_file():
                found.append((int(match.group(1)), child))
    return sorted(found)


def latest_checkpoint(root: Path) -> Path | None:
    """The most recent complete checkpoint directory under ``root``, if any."""
    found = _complete_checkpoints(root)
    return found[-1][1] if found else None


def save_checkpoint(
    root: Path, step: int, dictionary: SparseDictionary, optimizer: torch.optim.Optimizer,
    extra: dict[str, Any], keep: int,
) -> Path:
    """Write the checkpoint of ``step`` and prune all but the ``keep`` most recent ones."""
    path = checkpoint_dir(root, step)
    path.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{name}": t for name, t in dictionary.state_dict().items()}
    opt = optimizer.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for index, state in opt["state"].items():
        for name, value in state.items():
            if torch.is_tensor(value):
                tensors[f"optim.{index}.{name}"] = value
            else:
                scalars.setdefault(str(index), {})[name] = value
    save_tensors(path / STATE_FILE, tensors, {"format": FORMAT, "step": str(step)})
    write_json(
        path / TRAINER_FILE,
        {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "step": step,
            "kind": dictionary.kind,
            "n_models": dictionary.n_models,
            "dictionary_config": dictionary.config.to_dict(),
            "optimizer": {"param_groups": opt["param_groups"], "scalars": scalars},
            **extra,
        },
    )
    for _, old in _complete_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return path


def load_checkpoint(
    path: Path, dictionary: SparseDictionary, optimizer: torch.optim.Optimizer
) -> dict[str, Any]:
    """Restore ``dictionary`` and ``optimizer`` in place from ``path``; returns trainer.json."""
    path = Path(path)
    meta = read_json(path / TRAINER_FILE, "trainer checkpoint")
    if meta.get("format") != FORMAT or not isinstance(meta.get("format_version"), int):
        raise DifflensError(f"{path} is not a difflens dictionary checkpoint")
    if meta["format_version"] > FORMAT_VERSION:
        raise DifflensError(
            f"{path} has checkpoint format {meta['format_version']}; this difflens reads up to "
            f"{FORMAT_VERSION}: upgrade difflens"
        )
    if meta.get("kind") != dictionary.kind or meta.get("dictionary_config") != (
        dictionary.config.to_dict()
    ):
        raise DifflensError(
            f"the checkpoint in {path} was written for a different dictionary "
            f"({meta.get('kind')}, {meta.get('dictionary_config')}); resume with the same "
            "DictionaryConfig or train into a fresh output directory"
        )
    tensors, tmeta = load_tensors(path / STATE_FILE, "checkpoint state")
    if tmeta.get("step") != str(meta["step"]):
        raise DifflensError(
            f"{path}: {STATE_FILE} is from step {tmeta.get('step')} but {TRAINER_FILE} from "
            f"step {meta['step']}; delete this checkpoint directory to resume from the previous one"
        )
    model = {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
    check_state(dictionary.state_dict(), model, path / STATE_FILE, "delete this checkpoint")
    device = next(dictionary.parameters()).device
    dictionary.load_state_dict({k: v.to(device) for k, v in model.items()})

    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = value
    for index, values in meta["optimizer"]["scalars"].items():
        state.setdefault(int(index), {}).update(values)
    optimizer.load_state_dict({"state": state, "param_groups": meta["optimizer"]["param_groups"]})
    return meta
