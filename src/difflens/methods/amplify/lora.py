"""LoRA weight amplification: scale a PEFT adapter's update per layer range and module kind.

A LoRA module adds ``ΔW = s · B A`` to a weight (``s = lora_alpha / r``).  Multiplying ``B`` by
``f`` multiplies ``ΔW`` by ``f`` and nothing else, so the scaled adapter is an ordinary PEFT
adapter: any engine that serves LoRA (PEFT, vLLM) runs it.  ``f = 1`` reproduces the finetune
bit for bit, ``f = 0`` the base, ``f = 2`` doubles the finetune's weight change, ``f = −1``
reverses it.

The factor of one module is the product of three parts, each 1 unless given::

    factor = scale × layers[layer] × modules[kind]

    --scale 2                          every module ×2
    --scale-layers 0-8:1.5,9-17:3      layers 0..8 ×1.5, layers 9..17 ×3 (inclusive ranges)
    --scale-modules o_proj:0,down_proj:2

``export_scaled`` writes the new adapter atomically (a temporary sibling directory renamed into
place), so an interrupted or refused export leaves nothing behind.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from difflens.errors import DifflensError

WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"
RECORD = "amplification.json"
# "…layers.12.self_attn.q_proj.lora_B.weight" (also gpt2's ".h.12.", lora_embedding_B, biases).
_B_KEY = re.compile(r"\.(?P<kind>[^.]+)\.lora_(?:embedding_)?B(?:\.[^.]+)?(?:\.weight|\.bias)?$")
_LAYER = re.compile(r"\.(?:layers|h|layer|blocks|block)\.(\d+)\.")


@dataclass(frozen=True)
class ScaleSpec:
    """Factors of a LoRA scaling (see the module docstring)."""

    scale: float = 1.0
    layers: list[tuple[int, int, float]] = field(default_factory=list)  # (first, last, factor)
    modules: dict[str, float] = field(default_factory=dict)

    def factor(self, layer: int | None, kind: str) -> float:
        f = self.scale * self.modules.get(kind, 1.0)
        for first, last, value in self.layers:
            if layer is not None and first <= layer <= last:
                f *= value
        return f

    def to_dict(self) -> dict[str, Any]:
        return {"scale": self.scale,
                "layers": [{"first": a, "last": b, "factor": f} for a, b, f in self.layers],
                "modules": dict(self.modules)}

    @property
    def is_identity(self) -> bool:
        return self.scale == 1.0 and not self.layers and not self.modules


def _factor(text: str, what: str, example: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise DifflensError(f"{what}: factor {text!r} is not a finite number (e.g. {example})")
    return value


def parse_layers(text: str | None) -> list[tuple[int, int, float]]:
    """``"0-8:1.5,9-17:3"`` → ``[(0, 8, 1.5), (9, 17, 3.0)]`` (ranges inclusive, no overlap)."""
    example = "--scale-layers 0-8:1.5,9-17:3"
    out: list[tuple[int, int, float]] = []
    for part in (text or "").split(","):
        if not part.strip():
            continue
        span, sep, value = part.strip().partition(":")
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", span.strip())
        if not sep or match is None:
            raise DifflensError(f"--scale-layers: {part.strip()!r} is not FIRST-LAST:FACTOR or "
                                f"LAYER:FACTOR (e.g. {example})")
        first, last = int(match.group(1)), int(match.group(2) or match.group(1))
        if last < first:
            raise DifflensError(f"--scale-layers: range {span.strip()} runs backwards; write "
                                f"{last}-{first}")
        for a, b, _ in out:
            if first <= b and a <= last:
                raise DifflensError(f"--scale-layers: ranges {a}-{b} and {first}-{last} "
                                    "overlap; give each layer one factor")
        out.append((first, last, _factor(value.strip(), "--scale-layers", example)))
    return out


def parse_modules(text: str | None) -> dict[str, float]:
    """``"o_proj:0,down_proj:2"`` → ``{"o_proj": 0.0, "down_proj": 2.0}``."""
    example = "--scale-modules o_proj:0,down_proj:2"
    out: dict[str, float] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        name, sep, value = part.strip().partition(":")
        if not sep or not name.strip():
            raise DifflensError(f"--scale-modules: {part.strip()!r} is not MODULE:FACTOR "
                                f"(e.g. {example})")
        if name.strip() in out:
            raise DifflensError(f"--scale-modules: {name.strip()} is given twice")
        out[name.strip()] = _factor(value.strip(), "--scale-modules", example)
    return out


def parse_spec(scale: float = 1.0, layers: str | None = None,
               modules: str | None = None) -> ScaleSpec:
    """A :class:`ScaleSpec` from the three flags (one-line errors for malformed ones)."""
    return ScaleSpec(_factor(str(scale), "--scale", "--scale 2"), parse_layers(layers),
                     parse_modules(modules))


def adapter_dir(source: str | os.PathLike) -> Path:
    """The PEFT adapter directory of ``source`` (an adapter dir, or an organism's adapter/)."""
    from difflens.models.loading import resolve_source

    kind, location = resolve_source(source)
    path = Path(location)
    if kind == "organism" and (path / "adapter" / CONFIG).exists():
        path = path / "adapter"
    elif kind != "adapter":
        raise DifflensError(f"{source} is not a PEFT (LoRA) adapter directory; LoRA scaling "
                            "needs --finetuned ADAPTER_DIR (or an organism built as an adapter)")
    if not (path / WEIGHTS).exists():
        raise DifflensError(f"{path} has no {WEIGHTS}; LoRA scaling reads safetensors adapters")
    return path


def targeted(keys: list[str]) -> tuple[dict[str, set[int | None]], list[str]]:
    """Module kinds (with their layers) holding a LoRA ``B`` in ``keys``, and those ``B`` keys."""
    kinds: dict[str, set[int | None]] = {}
    b_keys = []
    for key in keys:
        match = _B_KEY.search(key)
        if match is None:
            continue
        layer = _LAYER.search(key)
        kinds.setdefault(match.group("kind"), set()).add(int(layer.group(1)) if layer else None)
        b_keys.append(key)
    return kinds, b_keys


def scaled_tensors(adapter: Path, spec: ScaleSpec) -> tuple[dict[str, Any], dict[str, Any]]:
    """The adapter's tensors with every LoRA ``B`` multiplied by its factor.

    Returns ``(tensors, record)``; ``record`` lists the factor per (kind, layer) actually used.
    One line when the adapter holds no LoRA B, is a DoRA adapter (the magnitude vector makes
    the update non-linear in B), or when a module kind / layer of ``spec`` is not targeted.
    """
    from safetensors.torch import load_file

    config = _read_config(adapter)
    if config.get("use_dora"):
        raise DifflensError(f"{adapter} is a DoRA adapter; scaling B does not scale its update "
                            "linearly, so difflens scales plain LoRA adapters only")
    try:
        tensors = load_file(str(adapter / WEIGHTS))
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise DifflensError(f"{adapter / WEIGHTS} cannot be read ({str(exc).splitlines()[0]}); "
                            "re-export or re-download the adapter") from None
    kinds, b_keys = targeted(list(tensors))
    if not b_keys:
        raise DifflensError(f"{adapter} holds no LoRA B matrices (lora_B); it is not a LoRA "
                            "adapter difflens can scale")
    unknown = sorted(set(spec.modules) - set(kinds))
    if unknown:
        raise DifflensError(f"--scale-modules: the adapter does not target {', '.join(unknown)}; "
                            f"it targets {', '.join(sorted(kinds))}")
    layers = sorted({lay for ls in kinds.values() for lay in ls if lay is not None})
    for first, last, _ in spec.layers:
        if not layers or last > layers[-1]:
            have = f"{layers[0]}-{layers[-1]}" if layers else "none (no layer indices)"
            raise DifflensError(f"--scale-layers: range {first}-{last} is outside the adapter's "
                                f"layers ({have})")
    used: dict[str, dict[str, float]] = {}
    for key in b_keys:
        kind = _B_KEY.search(key).group("kind")
        match = _LAYER.search(key)
        layer = int(match.group(1)) if match else None
        f = spec.factor(layer, kind)
        used.setdefault(kind, {})[str(layer)] = f
        if f != 1.0:
            t = tensors[key]
            tensors[key] = (t.float() * f).to(t.dtype)
    return tensors, {"factors": used, "spec": spec.to_dict()}


def export_scaled(source: str | os.PathLike, out: str | os.PathLike, spec: ScaleSpec
                  ) -> Path:
    """Write the scaled adapter of ``source`` to the new directory ``out`` (atomically).

    ``out`` holds ``adapter_config.json`` (unchanged), ``adapter_model.safetensors`` (scaled)
    and ``amplification.json`` (source, spec, factor per module and layer); the source's other
    small files (tokenizer, README) are copied.  ``out`` must not exist or be empty.
    """
    from safetensors.torch import save_file

    adapter = adapter_dir(source)
    target = Path(out).expanduser()
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise DifflensError(f"{target} already exists and is not empty; choose a new --export "
                            "directory (difflens never overwrites an adapter)")
    tensors, record = scaled_tensors(adapter, spec)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        for item in adapter.iterdir():
            if item.is_file() and item.name not in (WEIGHTS, "adapter_model.bin", RECORD):
                shutil.copy2(item, tmp / item.name)
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp / WEIGHTS),
                  metadata={"format": "pt"})
        (tmp / RECORD).write_text(json.dumps({"source": str(adapter), **record}, indent=1),
                                  encoding="utf-8")
        if target.exists():
            target.rmdir()  # empty (checked above): rename needs the name free
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _read_config(adapter: Path) -> dict[str, Any]:
    from difflens.models.loading import read_config_json

    return read_config_json(adapter / CONFIG, "PEFT adapter directory")
