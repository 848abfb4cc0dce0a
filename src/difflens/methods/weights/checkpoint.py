"""Read one model's weights tensor by tensor, and its readout head, without loading the model.

:class:`Checkpoint` opens the safetensors files of a transformers directory lazily
(``safe_open``: headers now, one tensor per ``get``), so a full finetune streams one tensor pair
at a time.  :class:`LoadedModel` serves the same calls from a model in memory (a GGUF or hub base,
for which there is no safetensors file to stream).  :func:`readout_head` builds the model's
skeleton on the ``meta`` device and materialises only the final norm and the unembedding, so a
readout costs the unembedding matrix, not the model.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from difflens.errors import DifflensError
from difflens.models.loading import read_config_json

if TYPE_CHECKING:
    import torch

    from difflens.models.arch import Architecture

# GPT-2 style Conv1D modules store their weight as (d_in, d_out); everything else as Linear.
_CONV1D_FAMILIES = {"gpt2"}
_CONV1D_KINDS = {"c_attn", "c_proj", "c_fc"}


def hidden_size(config: dict[str, Any]) -> int:
    text = config.get("text_config") or config
    value = text.get("hidden_size") or text.get("n_embd") or text.get("d_model")
    if not value:
        raise DifflensError("config.json has no hidden_size; is this a causal LM checkpoint?")
    return int(value)


class Checkpoint:
    """The tensors of a transformers checkpoint directory (safetensors, possibly sharded)."""

    def __init__(self, path: Path, label: str) -> None:
        self.path = Path(path)
        self.label = label
        self.config = read_config_json(self.path / "config.json", "model directory")
        files = sorted(self.path.glob("*.safetensors"))
        if not files:
            raise DifflensError(f"{label} ({self.path}) has no .safetensors files; weights "
                                "diffing reads safetensors checkpoints: convert it first")
        from safetensors import safe_open

        self._handles: dict[Path, Any] = {}
        self.files: dict[str, Path] = {}
        for file in files:
            try:
                handle = safe_open(str(file), framework="pt")
            except Exception as exc:  # any header error is the same user error
                raise DifflensError(f"{file} is not a readable safetensors file ({exc}); "
                                    "re-download or rebuild it") from None
            self._handles[file] = handle
            self.files.update(dict.fromkeys(handle.keys(), file))
        self.hidden = hidden_size(self.config)
        self.conv1d = self.config.get("model_type") in _CONV1D_FAMILIES

    def names(self) -> set[str]:
        return set(self.files)

    def shape(self, name: str) -> tuple[int, ...]:
        """Shape as stored, from the header only."""
        return tuple(self._handles[self.files[name]].get_slice(name).get_shape())

    def raw(self, name: str) -> torch.Tensor:
        return self._handles[self.files[name]].get_tensor(name)

    def linear_shape(self, name: str, kind: str) -> tuple[int, ...]:
        shape = self.shape(name)
        return shape[::-1] if self._transposed(kind) else shape

    def linear(self, name: str, kind: str) -> torch.Tensor:
        """The ``(d_out, d_in)`` float32 weight of a linear module (Conv1D transposed)."""
        weight = self.raw(name).float()
        return weight.T if self._transposed(kind) else weight

    def _transposed(self, kind: str) -> bool:
        return self.conv1d and kind.rsplit(".", 1)[-1] in _CONV1D_KINDS


class LoadedModel:
    """The same reads served by a model already in memory (GGUF or hub base)."""

    def __init__(self, model: Any, tokenizer: Any, label: str) -> None:
        from difflens.models.arch import architecture

        self.model, self.tokenizer, self.label = model, tokenizer, label
        self.arch = architecture(model)
        self.hidden = self.arch.hidden_size
        self._params = dict(self.arch.model.named_parameters())
        from transformers.pytorch_utils import Conv1D

        self._conv = {f"{name}.weight" for name, mod in self.arch.model.named_modules()
                      if isinstance(mod, Conv1D)}

    def names(self) -> set[str]:
        return set(self._params)

    def linear_shape(self, name: str, kind: str) -> tuple[int, ...]:
        shape = tuple(self._params[name].shape)
        return shape[::-1] if name in self._conv else shape

    def linear(self, name: str, kind: str) -> torch.Tensor:
        weight = self._params[name].detach().float()
        return weight.T if name in self._conv else weight


def load_base(location: Path | str, kind: str, label: str, trust_remote_code: bool
              ) -> Checkpoint | LoadedModel:
    """A base as a streamable checkpoint (directory) or, for GGUF / hub sources, loaded."""
    if kind == "dir":
        return Checkpoint(Path(location), label)
    # GGUF, hub id, or a directory whose head could not be rebuilt alone ("dir-full").
    from difflens.models.loading import LoadOptions, load_causal_lm

    model, tokenizer = load_causal_lm(str(location),
                                      LoadOptions(trust_remote_code=trust_remote_code))
    return LoadedModel(model, tokenizer, label)


class _NeedsFullLoad(Exception):
    """The light head cannot be built from this checkpoint: load the model instead."""


def readout_head(base: Checkpoint | LoadedModel, device: str, trust_remote_code: bool
                 ) -> tuple[Architecture, Any]:
    """``(architecture, tokenizer)`` of the base, whose ``final_norm`` and ``unembed`` are real
    (the rest of a checkpoint base stays on the ``meta`` device: nothing else is read).

    A checkpoint whose head cannot be rebuilt that way (tensor names the skeleton does not
    predict, a norm with buffers) is loaded whole instead: slower, same readout."""
    if isinstance(base, Checkpoint):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(base.path),
                                                  trust_remote_code=trust_remote_code)
        try:
            return _light_head(base, device, trust_remote_code), tokenizer
        except _NeedsFullLoad:
            base = load_base(base.path, "dir-full", base.label, trust_remote_code)
    arch = base.arch
    if device != "cpu":
        arch.final_norm.to(device)
        arch.unembed.to(device)
    return arch, base.tokenizer


def _light_head(base: Checkpoint, device: str, trust_remote_code: bool) -> Architecture:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from difflens.models.arch import architecture

    config = AutoConfig.from_pretrained(str(base.path), trust_remote_code=trust_remote_code)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    arch = architecture(skeleton)
    names = {id(mod): name for name, mod in arch.model.named_modules()}
    # A tied unembedding has no tensor of its own: it is the input embedding's.  An untied one
    # whose name the skeleton does not share with the file (transformers renames some, e.g.
    # gpt-neox's embed_out) is loaded whole: never read the embedding in its place.
    tied = getattr(arch.unembed, "weight", None) is getattr(arch.embed, "weight", False)
    for module, fallbacks in ((arch.final_norm, ()), (arch.unembed, (arch.embed,) if tied
                                                      else ())):
        if any(True for _ in module.buffers()):
            raise _NeedsFullLoad
        prefixes = [names[id(module)], *(names[id(m)] for m in fallbacks)]
        for pname, _param in list(module.named_parameters()):
            key = next((k for k in (f"{p}.{pname}" for p in prefixes) if k in base.files), None)
            if key is None:
                raise _NeedsFullLoad
            owner_name, _, leaf = pname.rpartition(".")
            owner = module.get_submodule(owner_name) if owner_name else module
            value = base.raw(key).to(device=device, dtype=torch.float32)
            setattr(owner, leaf, torch.nn.Parameter(value, requires_grad=False))
    return arch
