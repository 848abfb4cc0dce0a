"""Which two sets of weights are diffed, decided from the model sources before anything loads.

A finetune is either a PEFT LoRA adapter (a directory with ``adapter_config.json``, or an
organism whose weights are one; also given by organism name) — read from the adapter's own
safetensors, the base only for ‖W_base‖_F and the readout — or a full checkpoint, streamed
tensor by tensor against the base.  Both sides of a full finetune must be safetensors
directories (GGUF cannot be streamed tensor by tensor).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from difflens.errors import DifflensError
from difflens.models.loading import EMBEDDED, resolve_source

LORA, FULL = "lora", "full"


@dataclass(frozen=True)
class PairSources:
    """The two sides: ``method`` is ``"lora"`` (``adapter_dir`` set) or ``"full"`` (``ft_dir``
    set); the base is ``(base_kind, base_location)`` with kind ``"dir"``, ``"gguf"`` or
    ``"hub"``; ``base_id`` / ``ft_id`` are what the user gave (for the report)."""

    method: str
    base_kind: str
    base_location: str
    base_id: str
    ft_id: str
    adapter_dir: str | None = None
    ft_dir: str | None = None
    organism: str | None = None  # organism directory, when the finetune is one


def _organism_by_name(name: str) -> Path | None:
    """The shipped organism called ``name`` (``--finetuned cake_bake``), if any."""
    from difflens.organisms.registry import load_registry

    entry = load_registry().get(name)
    return Path(entry.weights) if entry is not None and entry.weights else None


def _local_snapshot(repo: str) -> str | None:
    """A hub id's snapshot in the local Hugging Face cache (nothing is downloaded)."""
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(repo, local_files_only=True)
    except Exception:  # not cached, bad id, no hub client: all mean "not here"
        return None


def _base(source: str | None, method: str) -> tuple[str, str]:
    """``(kind, location)`` of the base: the embedded model is its safetensors directory."""
    kind, location = resolve_source(source)
    if kind == "embedded":
        from difflens.models.embedded import embedded_base_dir

        return "dir", str(embedded_base_dir())
    if kind == "hub":
        snapshot = _local_snapshot(str(location))
        if snapshot is not None and (Path(snapshot) / "config.json").exists():
            return "dir", snapshot
    if kind in ("adapter", "organism"):
        raise DifflensError(f"--base {source} is an adapter/organism, not a full model; pass "
                            "it as --finetuned and the model it was trained from as --base")
    if method == FULL and kind != "dir":
        what = "a GGUF file" if kind == "gguf" else "a hub id not in the local cache"
        raise DifflensError(f"--base {source} is {what}; weights diffing of a full finetune "
                            "needs both checkpoints as safetensors directories (convert or "
                            "download it first)")
    return kind, str(location)


def resolve_pair(base: str | None, finetuned: str | None) -> PairSources:
    """Classify the pair (cheap: paths and small JSON files only)."""
    from difflens.models.pair import adapter_base, default_organism_dir, open_organism

    if finetuned is None:
        if base not in (None, EMBEDDED):
            raise DifflensError("no finetuned model given; pass --finetuned PATH (a model "
                                "directory, PEFT adapter, organism or organism name)")
        finetuned = str(default_organism_dir())
    ft_id = str(finetuned)
    kind, location = resolve_source(finetuned)
    organism = None
    if kind == "hub":
        named = _organism_by_name(str(finetuned))
        if named is not None:
            kind, location = "organism", named
    if kind == "organism":
        organism = str(location)
        card, kind, location = open_organism(Path(location))
        if base is None:
            base = card.get("base_model", EMBEDDED)
    if kind == "adapter":
        if base is None:
            base = adapter_base(Path(location))
        base_kind, base_location = _base(base, LORA)
        return PairSources(LORA, base_kind, base_location, str(base or EMBEDDED), ft_id,
                           adapter_dir=str(location), organism=organism)
    if kind == "gguf":
        raise DifflensError(f"--finetuned {finetuned} is a GGUF file; weights diffing needs "
                            "safetensors checkpoints (a model directory or a PEFT adapter)")
    if kind == "hub":
        snapshot = _local_snapshot(str(location))
        if snapshot is None:
            raise DifflensError(f"--finetuned {finetuned} is neither a local path, a shipped "
                                "organism name nor a hub id in the local cache; download it "
                                "first or pass a directory")
        location = snapshot
    base_kind, base_location = _base(base, FULL)
    return PairSources(FULL, base_kind, base_location, str(base or EMBEDDED), ft_id,
                       ft_dir=str(location), organism=organism)

