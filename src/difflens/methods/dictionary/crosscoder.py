"""The two dictionaries of model diffing: a crosscoder over (base, ft) and a diff-SAE.

Both are :class:`~difflens.methods.dictionary.dictionary.SparseDictionary` instances and share
all machinery (BatchTopK / L1, AuxK, inference threshold, normalisation, save/load); they differ
only in what they read:

* :class:`Crosscoder`: paired activations ``(B, 2, d)`` with ``[:, 0]`` the base model and
  ``[:, 1]`` the finetuned one (``BASE``/``FT``); reconstructs both, ``(B, 2, d)``.
* :class:`DiffSAE`: the difference ``h_ft − h_base`` ``(B, d)`` (a paired ``(B, 2, d)`` batch is
  accepted too and differenced, so both dictionaries can train on one paired stream);
  reconstructs the difference, ``(B, d)``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from difflens.errors import DifflensError
from difflens.methods.dictionary.config import DictionaryConfig
from difflens.methods.dictionary.dictionary import BASE, FT, SparseDictionary


class Crosscoder(SparseDictionary):
    """Crosscoder over ``n_models`` (default 2: base, ft) activation streams of width ``d``.

    Example::

        cc = Crosscoder(DictionaryConfig(d_in=640, width=8192, k=100))
        out = cc(pairs)            # pairs: (B, 2, 640) raw activations
        out.latents                # (B, 8192)
        out.reconstruction         # (B, 2, 640) raw units
        out.losses.total.backward()
    """

    kind = "crosscoder"

    def __init__(self, config: DictionaryConfig, n_models: int = 2) -> None:
        if n_models < 2:
            raise DifflensError(
                f"a crosscoder needs at least 2 models, got {n_models}; use DiffSAE for one stream"
            )
        super().__init__(config, n_models)

    def prepare_input(self, x: Tensor) -> Tensor:
        """Validate ``(B, M, d)`` and cast to the parameter dtype."""
        expected = f"(B, {self.n_models}, d)"
        if not torch.is_tensor(x) or not x.is_floating_point() or x.shape[1:] != (
            self.n_models, self.config.d_in
        ):
            raise self._shape_error(x, expected)
        return x.to(self.W_enc.dtype)


class DiffSAE(SparseDictionary):
    """BatchTopK (or L1) SAE on the activation difference ``x = h_ft − h_base``.

    Input ``(B, d)`` differences, or ``(B, 2, d)`` pairs which are differenced here.  The one
    normalisation factor is estimated on the differences themselves.
    """

    kind = "diff_sae"

    def __init__(self, config: DictionaryConfig) -> None:
        super().__init__(config, 1)

    @classmethod
    def _build(cls, config: DictionaryConfig, n_models: int) -> SparseDictionary:
        return cls(config)

    def prepare_input(self, x: Tensor) -> Tensor:
        """``(B, d)`` -> ``(B, 1, d)``; ``(B, 2, d)`` pairs -> ``(ft − base)`` as ``(B, 1, d)``."""
        d = self.config.d_in
        if torch.is_tensor(x) and x.is_floating_point():
            if x.ndim == 2 and x.shape[1] == d:
                return x.to(self.W_enc.dtype).unsqueeze(1)
            if x.ndim == 3 and x.shape[1:] == (2, d):
                return (x[:, FT] - x[:, BASE]).to(self.W_enc.dtype).unsqueeze(1)
        raise self._shape_error(x, "(B, d) or (B, 2, d)")

    def format_output(self, recon: Tensor) -> Tensor:
        return recon.squeeze(1)


def load_dictionary(path: str | Path, device: str | torch.device = "cpu") -> SparseDictionary:
    """Load any saved dictionary (crosscoder or diff-SAE) from directory ``path``."""
    return SparseDictionary.load(path, device)
