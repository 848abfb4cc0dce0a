"""ModelPair: a base model and its finetune, loaded so that they can be compared.

When the finetune is a PEFT adapter, the weights are in memory once: the finetuned pass runs the
adapter-wrapped model and the base pass runs the same module with the adapter disabled.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from difflens.errors import DifflensError
from difflens.models.arch import Architecture, architecture
from difflens.models.embedded import EMBEDDED_BASE_ID
from difflens.models.loading import (
    EMBEDDED,
    LoadOptions,
    check_safetensors_dir,
    load_causal_lm,
    read_config_json,
    resolve_source,
)

BASE, FT = "base", "ft"


def default_organism_dir() -> Path:
    """The organism difflens ships, paired with the embedded base by default."""
    return Path(__file__).resolve().parent.parent / "organisms" / "shipped" / "cake_bake"


@dataclass
class ModelPair:
    """Base and finetuned causal LMs sharing one tokenizer.

    ``base_model`` and ``ft_model`` are the same object for adapter pairs; always go through
    :meth:`use` to run one side, which disables the adapter for the base pass.
    """

    base_model: Any
    ft_model: Any
    tokenizer: Any
    base_id: str
    ft_id: str
    adapter: bool = False
    card: dict | None = None
    organism_dir: str | None = None  # where the organism (card, documents) lives, if any
    _archs: dict[str, Architecture] = field(default_factory=dict, repr=False)

    @classmethod
    def load(
        cls,
        base: str | os.PathLike | None = None,
        finetuned: str | os.PathLike | None = None,
        options: LoadOptions | None = None,
    ) -> ModelPair:
        """Load a pair; with no arguments, the embedded Gemma base and the shipped organism.

        ``finetuned`` may be a PEFT adapter directory, a difflens organism directory, a full
        model (directory, GGUF file, hub id).  ``base`` defaults to the organism's or adapter's
        recorded base, else the embedded model.
        """
        options = options or LoadOptions()
        card = None
        if finetuned is None:
            if base not in (None, EMBEDDED):
                raise DifflensError(
                    "no finetuned model given; pass --finetuned PATH (a model directory, "
                    "PEFT adapter or organism)"
                )
            finetuned = default_organism_dir()
        kind, location = resolve_source(finetuned)
        if kind == "organism":
            card, kind, location = open_organism(Path(location))
            if base is None:
                base = card.get("base_model", EMBEDDED)
        if kind == "adapter":
            adapter_dir = Path(location)
            if base is None:
                base = adapter_base(adapter_dir)
            base_model, tokenizer = load_causal_lm(base, options)
            ft_model = _attach_adapter(base_model, adapter_dir)
            pair = cls(ft_model, ft_model, tokenizer, str(base or EMBEDDED), str(finetuned),
                       adapter=True, card=card)
        else:
            base_model, tokenizer = load_causal_lm(base, options)
            ft_model, ft_tokenizer = load_causal_lm(location, options)
            check_compatible(tokenizer, ft_tokenizer, base_model, ft_model)
            pair = cls(base_model, ft_model, tokenizer, str(base or EMBEDDED), str(finetuned),
                       card=card)
        if card is not None:
            pair.organism_dir = str(finetuned)
        if pair.tokenizer.pad_token is None:
            pair.tokenizer.pad_token = pair.tokenizer.eos_token
        return pair

    @classmethod
    def from_models(cls, base_model: Any, ft_model: Any, tokenizer: Any, **kw: Any) -> ModelPair:
        """Wrap models already in memory (checked for compatibility)."""
        if base_model is not ft_model:
            check_compatible(tokenizer, tokenizer, base_model, ft_model)
        adapter = base_model is ft_model and hasattr(ft_model, "disable_adapter")
        return cls(base_model, ft_model, tokenizer, kw.pop("base_id", "base"),
                   kw.pop("ft_id", "finetuned"), adapter=adapter, **kw)

    def arch(self, side: str = FT) -> Architecture:
        """Architecture handles of one side (``"base"`` or ``"ft"``)."""
        if side not in self._archs:
            self._archs[side] = architecture(self.ft_model if side == FT else self.base_model)
        return self._archs[side]

    @property
    def num_layers(self) -> int:
        return self.arch(FT).num_layers

    @property
    def device(self) -> Any:
        return next(self.ft_model.parameters()).device

    def resolve_layers(self, layers: list[int | float]) -> list[int]:
        """Resolve indices / relative depths to sorted unique layer indices."""
        return sorted({self.arch(FT).resolve_layer(layer) for layer in layers})

    @contextmanager
    def use(self, side: str) -> Iterator[tuple[Any, Architecture]]:
        """Yield ``(model, architecture)`` for one side; the base side of an adapter pair runs
        with the adapter disabled for the duration of the block."""
        if side not in (BASE, FT):
            raise ValueError(f"side must be 'base' or 'ft', not {side!r}")
        model = self.ft_model if side == FT else self.base_model
        ctx = model.disable_adapter() if (self.adapter and side == BASE) else nullcontext()
        with ctx:
            yield model, self.arch(side)

    @property
    def description(self) -> str | None:
        """The finetune's long description, when its organism card provides one."""
        if not self.card:
            return None
        return self.card.get("long_description") or self.card.get("short_description")


def check_compatible(tok_a: Any, tok_b: Any, model_a: Any, model_b: Any) -> None:
    """One-line errors for pairs that cannot be compared position by position."""
    if tok_a is not tok_b and tok_a.get_vocab() != tok_b.get_vocab():
        raise DifflensError(
            f"base and finetuned models use different tokenizers ({len(tok_a)} vs {len(tok_b)} "
            "tokens or different ids); model diffing needs the same vocabulary — pair the "
            "finetune with the base it was trained from"
        )
    arch_a, arch_b = architecture(model_a), architecture(model_b)
    if arch_a.hidden_size != arch_b.hidden_size or arch_a.num_layers != arch_b.num_layers:
        raise DifflensError(
            f"base and finetuned models differ in shape (hidden size {arch_a.hidden_size} vs "
            f"{arch_b.hidden_size}, {arch_a.num_layers} vs {arch_b.num_layers} layers); pair the "
            "finetune with the base it was trained from"
        )


def open_organism(path: Path) -> tuple[dict, str, Path]:
    card = read_config_json(path / "card.json", "organism directory")
    for sub, kind in (("adapter", "adapter"), ("model", "dir")):
        if (path / sub).is_dir():
            return card, kind, path / sub
    raise DifflensError(
        f"organism {path} has no adapter/ or model/ directory; rebuild it with "
        "`difflens organism build`"
    )


def adapter_base(adapter_dir: Path) -> str:
    config = read_config_json(adapter_dir / "adapter_config.json", "PEFT adapter directory")
    base = config.get("base_model_name_or_path") or EMBEDDED
    # The embedded model *is* google/gemma-3-270m: map the hub id to it so it loads offline.
    return EMBEDDED if base == EMBEDDED_BASE_ID else base


def _attach_adapter(model: Any, adapter_dir: Path) -> Any:
    """Wrap ``model`` with the PEFT adapter in ``adapter_dir`` (safetensors only)."""
    weights = adapter_dir / "adapter_model.safetensors"
    if not weights.exists():
        check_safetensors_dir(adapter_dir, allow_pickle=False)
        raise DifflensError(
            f"adapter directory {adapter_dir} has adapter_config.json but no "
            "adapter_model.safetensors; point to the directory holding the adapter weights"
        )
    check_safetensors_dir(adapter_dir, allow_pickle=False)
    from peft import PeftModel

    wrapped = PeftModel.from_pretrained(model, str(adapter_dir))
    wrapped.eval()
    wrapped.requires_grad_(False)
    return wrapped
