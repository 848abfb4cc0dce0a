"""The diff stage: plan which modules to diff (headers only, every check before any work),
then compute each module's ΔW SVD, one module at a time.

LoRA: ΔW = s·B·A from the adapter's safetensors (:func:`~.core.lora_delta_svd`; the base is
read one tensor at a time, only for ‖W_base‖_F).  Full finetune: both checkpoints streamed one
matching tensor pair at a time (:func:`~.core.dense_delta_svd`); peak memory is about one pair,
ΔW and its SVD beyond the process.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from difflens.errors import DifflensError
from difflens.methods.weights.checkpoint import Checkpoint, LoadedModel
from difflens.methods.weights.modules import parse_module, residual_role
from difflens.models.loading import read_config_json

# "base_model.model.model.layers.0.mlp.down_proj.lora_A.weight" (PEFT ≥ 0.5 drops the adapter
# name on save; older files keep it: ".lora_A.default.weight").
_FACTOR = re.compile(r"^(?:base_model\.model\.)?(.+)\.lora_([AB])(?:\.[^.]+)?\.weight$")


@dataclass
class Job:
    """One module to diff: its names, place and ΔW shape ``(d_out, d_in)``; for LoRA the
    factor keys and scale."""

    name: str  # module name in the model ("model.layers.3.mlp.down_proj")
    layer: int | None
    kind: str
    role: str | None
    shape: tuple[int, int]
    a_key: str | None = None
    b_key: str | None = None
    scale: float = 1.0
    rank: int | None = None

    @property
    def weight(self) -> str:
        return f"{self.name}.weight"


@dataclass
class Plan:
    method: str
    jobs: list[Job]
    hidden: int
    notes: list[str] = field(default_factory=list)


class Adapter:
    """A PEFT LoRA adapter directory: config and lazily read factors."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.config = read_config_json(self.path / "adapter_config.json",
                                       "PEFT adapter directory")
        peft_type = str(self.config.get("peft_type", "LORA")).upper()
        if peft_type != "LORA":
            raise DifflensError(f"adapter {self.path} is a {peft_type} adapter; the weight-space "
                                "lens reads LoRA adapters (or two full checkpoints)")
        if self.config.get("use_dora"):
            raise DifflensError(f"adapter {self.path} is a DoRA adapter (use_dora): its ΔW is "
                                "not s·B·A; merge it into a full checkpoint and diff that")
        weights = self.path / "adapter_model.safetensors"
        if not weights.exists():
            raise DifflensError(f"adapter directory {self.path} has no adapter_model.safetensors; "
                                "point to the directory holding the adapter weights")
        from safetensors import safe_open

        try:
            self._file = safe_open(str(weights), framework="pt")
        except Exception as exc:  # any header error: the same user error
            raise DifflensError(f"{weights} is not a readable safetensors file ({exc}); "
                                "re-download or rebuild the adapter") from None
        self.keys = list(self._file.keys())

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._file.get_slice(key).get_shape())

    def get(self, key: str) -> Any:
        return self._file.get_tensor(key)

    def scale(self, module: str, rank: int) -> float:
        """PEFT's scaling of one module: alpha / r, or alpha / √r with rsLoRA; per-module
        ``alpha_pattern`` entries win over ``lora_alpha``."""
        alpha = float(self.config.get("lora_alpha") or rank)
        for pattern, value in (self.config.get("alpha_pattern") or {}).items():
            if re.fullmatch(rf"(.*\.)?(?:{pattern})", module):
                alpha = float(value)
                break
        return alpha / rank ** 0.5 if self.config.get("use_rslora") else alpha / rank


def plan_lora(adapter: Adapter, base: Checkpoint | LoadedModel) -> Plan:
    """The modules of a LoRA adapter, checked against the base (headers and names only)."""
    factors: dict[str, dict[str, str]] = {}
    other: list[str] = []
    for key in adapter.keys:
        match = _FACTOR.match(key)
        if match:
            factors.setdefault(match.group(1), {})[match.group(2)] = key
        else:
            other.append(key)
    targets = adapter.config.get("target_modules")
    if not factors:
        raise DifflensError(f"adapter {adapter.path} holds no LoRA factors (lora_A/lora_B "
                            f"weights) for its target modules {targets}; it targets no module "
                            "this lens can diff")
    names, jobs = base.names(), []
    for module, pair in sorted(factors.items()):
        if set(pair) != {"A", "B"}:
            raise DifflensError(f"adapter {adapter.path} has lora_{next(iter(pair))} but not its "
                                f"partner for {module}; the adapter file is incomplete")
        a_shape, b_shape = adapter.shape(pair["A"]), adapter.shape(pair["B"])
        weight = f"{module}.weight"
        if weight not in names:
            raise DifflensError(f"adapter {adapter.path} targets {module}, which the base "
                                f"{base.label} does not have; pair the adapter with the base it "
                                "was trained from")
        layer, kind = parse_module(module)
        shape = (int(b_shape[0]), int(a_shape[1]))
        if tuple(base.linear_shape(weight, kind)) != shape:
            raise DifflensError(f"adapter {adapter.path}: {module} is {shape[0]} × {shape[1]} "
                                f"in the adapter but {base.linear_shape(weight, kind)} in the "
                                "base; pair the adapter with the base it was trained from")
        rank = int(a_shape[0])
        jobs.append(Job(module, layer, kind, residual_role(kind, shape, base.hidden), shape,
                        pair["A"], pair["B"], adapter.scale(module, rank), rank))
    notes = []
    if other:
        notes.append(f"{len(other)} adapter tensors are not LoRA factors of linear modules "
                     f"(e.g. {other[0]}) and are not diffed")
    return Plan("lora", jobs, base.hidden, notes)


def _layer_weights(ckpt: Checkpoint) -> dict[str, tuple[int | None, str]]:
    """Linear weights inside the layer stack: 2-D ``*.weight`` tensors under ``layers.N``."""
    found = {}
    for name in ckpt.names():
        if not name.endswith(".weight"):
            continue
        layer, kind = parse_module(name[: -len(".weight")])
        if layer is not None and len(ckpt.shape(name)) == 2:
            found[name] = (layer, kind)
    return found


def plan_full(base: Checkpoint, ft: Checkpoint) -> Plan:
    """Matching linear weights of two checkpoints (headers only)."""
    ours, theirs = _layer_weights(base), _layer_weights(ft)
    if set(ours) != set(theirs):
        odd = sorted(set(ours) ^ set(theirs))[0]
        side = base.label if odd in ours else ft.label
        raise DifflensError(f"the checkpoints differ in architecture: {odd} is only in the "
                            f"{side}; pair the finetune with the base it was trained from")
    if not ours:
        raise DifflensError(f"{base.label} ({base.path}) has no linear weights under a layer "
                            "stack (…layers.N…); is it a decoder-only causal LM?")
    jobs = []
    for name, (layer, kind) in sorted(ours.items(), key=lambda kv: (kv[1][0], kv[0])):
        shape = tuple(base.linear_shape(name, kind))
        if shape != tuple(ft.linear_shape(name, kind)):
            raise DifflensError(f"the checkpoints differ in shape at {name} ({shape} vs "
                                f"{tuple(ft.linear_shape(name, kind))}); pair the finetune with "
                                "the base it was trained from")
        module = name[: -len(".weight")]
        jobs.append(Job(module, layer, kind, residual_role(kind, shape, base.hidden), shape))
    notes = ["embeddings, unembedding and norms are not diffed (linear modules of the layers "
             "are)"]
    return Plan("full", jobs, base.hidden, notes)


def diff_jobs(plan: Plan, base: Checkpoint | LoadedModel, other: Adapter | Checkpoint,
              device: str, keep: int) -> Iterator[tuple[Job, Any, float]]:
    """``(job, DeltaSVD, ‖W_base‖_F)`` per module, one at a time; ``keep`` singular triplets
    of a dense ΔW are kept (a LoRA ΔW keeps its r)."""
    import torch

    from difflens.methods.weights.core import dense_delta_svd, lora_delta_svd

    for job in plan.jobs:
        w_base = base.linear(job.weight, job.kind)
        base_norm = float(torch.linalg.vector_norm(w_base))
        if isinstance(other, Adapter):
            del w_base  # only its norm was needed
            svd = lora_delta_svd(other.get(job.a_key).to(device), other.get(job.b_key).to(device),
                                 job.scale)
        else:
            delta = other.linear(job.weight, job.kind).to(device)
            delta -= w_base.to(device)
            del w_base
            svd = dense_delta_svd(delta, keep)
            del delta
        yield job, svd, base_norm
