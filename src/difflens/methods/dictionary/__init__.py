"""Sparse dictionaries for model diffing: crosscoders, diff-SAEs and Latent Scaling.

The pure tensor core: everything here works on activation tensors and knows nothing about
models.  Paired activations are ``(B, 2, d)`` with ``[:, BASE]`` the base model and ``[:, FT]``
the finetuned one.

Typical use::

    cfg = DictionaryConfig(d_in=640, width=8192, k=100)
    cc = Crosscoder(cfg)
    Trainer(cc, TrainConfig(steps=20_000, batch_size=4096), out_dir="runs/cc").fit(batches)
    cc.eval()
    tags = tag_latents(delta_norm(cc.W_dec))
    ls = latent_scaling(cc, batches, latents=(tags == LatentTag.FT_ONLY).nonzero().squeeze(1))
"""

from __future__ import annotations

import sys
from types import ModuleType
from typing import Any

# Lazy: `difflens --help` imports the dictionary CLI, which must not pull in torch.
_LAZY = {
    "BASE": "dictionary",
    "Crosscoder": "crosscoder",
    "DictionaryConfig": "config",
    "DictionaryOutput": "dictionary",
    "DiffSAE": "crosscoder",
    "EvalResult": "metrics",
    "Evaluation": "metrics",
    "FT": "dictionary",
    "LatentKind": "synthetic",
    "LatentScaling": "latent_scaling",
    "LatentScalingResult": "latent_scaling",
    "LatentTag": "metrics",
    "Losses": "dictionary",
    "NormStats": "normalize",
    "Normalizer": "normalize",
    "SparseDictionary": "dictionary",
    "SyntheticPairs": "synthetic",
    "TrainConfig": "config",
    "TrainResult": "train",
    "Trainer": "train",
    "dead_fraction": "metrics",
    "decoder_cosine": "metrics",
    "delta_norm": "metrics",
    "delta_norm_histogram": "metrics",
    "estimate_scales": "normalize",
    "evaluate": "metrics",
    "fve": "metrics",
    "l0": "metrics",
    "latent_scaling": "latent_scaling",
    "load_dictionary": "crosscoder",
    "make_synthetic_pairs": "synthetic",
    "tag_latents": "metrics",
}

__all__ = [
    "BASE",
    "FT",
    "Crosscoder",
    "DictionaryConfig",
    "DictionaryOutput",
    "DiffSAE",
    "EvalResult",
    "Evaluation",
    "LatentKind",
    "LatentScaling",
    "LatentScalingResult",
    "LatentTag",
    "Losses",
    "NormStats",
    "Normalizer",
    "SparseDictionary",
    "SyntheticPairs",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "dead_fraction",
    "decoder_cosine",
    "delta_norm",
    "delta_norm_histogram",
    "estimate_scales",
    "evaluate",
    "fve",
    "l0",
    "latent_scaling",
    "load_dictionary",
    "make_synthetic_pairs",
    "tag_latents",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from importlib import import_module

        value = getattr(import_module(f"difflens.methods.dictionary.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _Package(ModuleType):
    """The package's module type: keeps an exported name from being shadowed by a submodule.

    Importing a submodule binds it on its package (``package.latent_scaling = <module>``); for
    ``latent_scaling`` the submodule and the function it exports share a name, and the binding
    would make ``from difflens.methods.dictionary import latent_scaling`` return the module.
    Such a binding is dropped here, so the name resolves to the export (through
    :func:`__getattr__`); the submodule itself stays reachable by its full import path."""

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, ModuleType) and _LAZY.get(name) == name:
            self.__dict__.pop(name, None)
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
