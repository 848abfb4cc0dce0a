"""Architecture access: decoder layers, final norm, unembedding and embedding of a causal LM.

One small adapter per model family would be brittle; instead the known attribute paths of the
families difflens supports are tried in order (llama, mistral, qwen2/3, gemma/gemma2/gemma3,
gpt2, gpt-neox, ...), which also covers most new decoder-only models that copy the llama layout.
PEFT wrappers are unwrapped first, so the same accessors work on an adapter-wrapped model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from difflens.errors import DifflensError

if TYPE_CHECKING:
    import torch
    from torch import nn

# (layers, final norm) attribute paths, relative to the unwrapped *ForCausalLM module.
_LAYOUTS: tuple[tuple[str, str], ...] = (
    ("model.layers", "model.norm"),  # llama, mistral, qwen2, qwen3, gemma*, phi3, olmo
    ("model.language_model.layers", "model.language_model.norm"),  # gemma3 multimodal wrapper
    ("transformer.h", "transformer.ln_f"),  # gpt2, gpt-j, bloom-like
    ("gpt_neox.layers", "gpt_neox.final_layer_norm"),  # pythia / gpt-neox
    ("model.decoder.layers", "model.decoder.final_layer_norm"),  # opt
)


def _get(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def unwrap(model: nn.Module) -> nn.Module:
    """The underlying transformers model of a (possibly PEFT-wrapped) model."""
    inner = model
    # PeftModel.base_model is a LoraModel whose .model is the transformers model.
    if hasattr(inner, "peft_config") and hasattr(inner, "base_model"):
        inner = inner.base_model
        if hasattr(inner, "model"):
            inner = inner.model
    return inner


@dataclass(frozen=True)
class Architecture:
    """Handles to the parts of a causal LM that model diffing reads and edits."""

    model: nn.Module
    layers: Any  # nn.ModuleList of decoder blocks
    final_norm: nn.Module
    unembed: nn.Module
    embed: nn.Module
    hidden_size: int
    logit_softcap: float | None

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def resolve_layer(self, layer: int | float) -> int:
        """Index of a layer given as an index, a negative index or a relative depth.

        ``0.5`` is the middle layer, ``-1`` the last, ``3`` the fourth.  A float in [0, 1] is a
        relative depth: ``round(depth * (num_layers - 1))``.
        """
        n = self.num_layers
        if isinstance(layer, float):
            if not 0.0 <= layer <= 1.0:
                raise DifflensError(
                    f"relative layer depth {layer} is outside [0, 1]; give a depth like 0.66 "
                    f"or an integer index in [-{n}, {n - 1}]"
                )
            return round(layer * (n - 1))
        index = int(layer)
        if not -n <= index < n:
            raise DifflensError(
                f"layer {index} is out of range: this model has {n} layers; "
                f"use an index in [-{n}, {n - 1}] or a relative depth in [0, 1]"
            )
        return index % n

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logit lens: unembed(final_norm(hidden)), with the family's final softcap.

        Args:
            hidden: ``(..., d)`` residual-stream vectors.
        Returns:
            ``(..., V)`` logits.
        """
        import torch

        out = self.unembed(self.final_norm(hidden))
        if self.logit_softcap:
            out = torch.tanh(out / self.logit_softcap) * self.logit_softcap
        return out


def architecture(model: nn.Module) -> Architecture:
    """Locate layers, final norm, unembedding and embedding of ``model`` (PEFT-aware)."""
    inner = unwrap(model)
    for layers_path, norm_path in _LAYOUTS:
        try:
            layers = _get(inner, layers_path)
            norm = _get(inner, norm_path)
        except AttributeError:
            continue
        unembed = inner.get_output_embeddings()
        embed = inner.get_input_embeddings()
        if unembed is None:
            break
        config = inner.config
        text_config = getattr(config, "text_config", None) or config
        hidden = getattr(text_config, "hidden_size", None) or text_config.n_embd
        softcap = getattr(text_config, "final_logit_softcapping", None)
        return Architecture(inner, layers, norm, unembed, embed, int(hidden), softcap)
    raise DifflensError(
        f"unsupported architecture {type(inner).__name__}: difflens could not find its decoder "
        "layers, final norm and unembedding; supported families are llama, mistral, qwen2, qwen3, "
        "gemma, gemma2, gemma3, gpt2, gpt-neox and opt"
    )
