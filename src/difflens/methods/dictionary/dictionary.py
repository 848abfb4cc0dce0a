"""The shared sparse-dictionary module behind :class:`Crosscoder` and :class:`DiffSAE`.

Over ``M`` input streams (``M = 2`` models for a crosscoder, ``M = 1`` for an SAE), with the
inputs already scaled by the stored per-model factors (:mod:`.normalize`)::

    f   = ReLU(Σ_m W_enc^m a^m + b_enc)                 (B, F)
    â^m = W_dec^m f + b_dec^m                            (B, d) per model

Parameters (the state-dict layout is a public contract, see ``save``):

* ``W_enc``: ``(F, M, d)``; row ``i`` is latent ``i``'s encoder vector for each model.
* ``W_dec``: ``(F, M, d)``; ``W_dec[i, m]`` is the decoder vector ``d_i^m``.
* ``b_enc``: ``(F,)``; ``b_dec``: ``(M, d)``.
* buffers: ``normalizer.scale`` ``(M,)``, ``normalizer.fitted``, ``threshold`` (θ, -1 while
  unset) and ``tokens_since_fired`` ``(F,)`` (for dead latents).

Sparsity (``DictionaryConfig.sparsity``):

* ``"l1"``: all ReLU latents are kept; loss ``Σ_m‖a^m − â^m‖² + λ Σ_i f_i Σ_m‖d_i^m‖``.
* ``"batchtopk"``: training keeps the ``k·B`` largest *scaled* activations ``f_i Σ_m‖d_i^m‖``
  of the batch (scaling makes the choice independent of how a latent splits its magnitude
  between ``f`` and ``d``); loss ``Σ_m‖a^m − â^m‖² + α · AuxK``.  In ``eval()`` mode a latent is
  kept when its scaled activation exceeds θ, the EMA of the smallest kept scaled activation seen
  in training, so each sample is encoded independently of its batch.

Training-mode forwards update ``threshold`` and ``tokens_since_fired`` (like BatchNorm's running
statistics); eval-mode forwards have no side effects.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, NamedTuple

import torch
from torch import Tensor, nn

from difflens.errors import DifflensError
from difflens.methods.dictionary.config import DictionaryConfig
from difflens.methods.dictionary.normalize import Normalizer
from difflens.methods.dictionary.serialization import (
    check_state,
    load_tensors,
    read_json,
    save_tensors,
    write_json,
)
from difflens.methods.dictionary.sparse_ops import (
    SparseCode,
    batch_topk,
    encode_gather,
    rowwise_topk,
    sparse_decode,
    threshold_select,
)

BASE, FT = 0, 1
"""Index of the base and the finetuned model along the model axis of paired inputs."""

FORMAT = "difflens-dictionary"
FORMAT_VERSION = 1
WEIGHTS_FILE = "dictionary.safetensors"
CONFIG_FILE = "config.json"


class Losses(NamedTuple):
    """Scalar losses of one batch, in normalised units."""

    total: Tensor
    """What the trainer minimises: reconstruction + λ·sparsity (L1) or + α·auxk (BatchTopK)."""
    reconstruction: Tensor
    """Batch mean of ``Σ_m ‖a^m − â^m‖²``."""
    sparsity: Tensor
    """Batch mean of ``Σ_i f_i Σ_m ‖d_i^m‖`` (unweighted; 0 for BatchTopK)."""
    auxk: Tensor
    """AuxK loss (unweighted): batch mean of ``‖e − ê‖²``, ``e = a − â`` (detached), ``ê`` the
    reconstruction of ``e`` from each sample's top ``aux_k`` dead latents.  0 when no latent is
    dead or outside training."""


class DictionaryOutput(NamedTuple):
    """Result of a forward pass."""

    latents: Tensor
    """``(B, F)`` latent activations after sparsification (normalised units)."""
    reconstruction: Tensor
    """Reconstructed input in raw units, same shape as the input (internal ``*_normalized``
    methods return ``(B, M, d)`` in normalised units)."""
    losses: Losses


class SparseDictionary(nn.Module):
    """Base class: parameters, sparsification, losses, statistics, save/load."""

    kind: ClassVar[str] = ""
    _registry: ClassVar[dict[str, type[SparseDictionary]]] = {}

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if cls.kind:
            SparseDictionary._registry[cls.kind] = cls

    def __init__(self, config: DictionaryConfig, n_models: int) -> None:
        super().__init__()
        self.config = config
        self.n_models = n_models
        width, d = config.width, config.d_in
        gen = torch.Generator().manual_seed(config.seed)
        dec = torch.randn(width, n_models, d, generator=gen)
        dec = dec / dec.norm(dim=-1, keepdim=True) * config.dec_init_norm
        self.W_dec = nn.Parameter(dec)
        self.W_enc = nn.Parameter(dec.clone())  # encoder = decoder transpose at init
        self.b_enc = nn.Parameter(torch.zeros(width))
        self.b_dec = nn.Parameter(torch.zeros(n_models, d))
        self.normalizer = Normalizer(n_models)
        self.register_buffer("threshold", torch.tensor(-1.0))
        self.register_buffer("tokens_since_fired", torch.zeros(width, dtype=torch.int64))
        # Previous batch cutoff: only speeds up the next selection, never changes it.
        self._cutoff_hint: float | None = None

    # ---- shape adapters (overridden by subclasses) ------------------------------------------
    def prepare_input(self, x: Tensor) -> Tensor:
        """Raw input as given by the user -> raw ``(B, M, d)`` float tensor."""
        raise NotImplementedError

    def format_output(self, recon: Tensor) -> Tensor:
        """Raw ``(B, M, d)`` reconstruction -> the user-facing shape."""
        return recon

    def _shape_error(self, x: Tensor, expected: str) -> DifflensError:
        """The error for an input that is not a float tensor of shape ``expected``."""
        if not torch.is_tensor(x) or not x.is_floating_point():
            return DifflensError(f"{self.kind} expects a float tensor of shape {expected}")
        return DifflensError(
            f"{self.kind} expects activations of shape {expected} with d={self.config.d_in}; "
            f"got {tuple(x.shape)}: pass activations of the layer the dictionary was built for"
        )

    # ---- forward ----------------------------------------------------------------------------
    def forward(self, x: Tensor, *, k: int | None = None) -> DictionaryOutput:
        """Encode, sparsify, decode raw activations ``x`` (shape: see the subclass).

        ``k`` overrides ``config.k`` for training-mode batch top-k (used by k annealing).
        """
        xn = self.normalizer.normalize(self.prepare_input(x))
        out = self.forward_normalized(xn, k=k)
        recon = self.format_output(self.normalizer.denormalize(out.reconstruction))
        return out._replace(reconstruction=recon)

    def forward_normalized(self, xn: Tensor, *, k: int | None = None) -> DictionaryOutput:
        """Like :meth:`forward` on already-normalised ``(B, M, d)``; reconstruction stays
        normalised ``(B, M, d)``."""
        batch = xn.shape[0]
        x_flat = xn.reshape(batch, -1)
        w_enc = self.W_enc.reshape(self.config.width, -1)
        w_dec = self.W_dec.reshape(self.config.width, -1)
        b_dec = self.b_dec.reshape(-1)
        zero = x_flat.new_zeros(())
        if self.config.sparsity == "l1":
            latents = torch.relu(torch.addmm(self.b_enc, x_flat, w_enc.T))
            recon = torch.addmm(b_dec, latents, w_dec)
            sparsity = (latents * self.W_dec.norm(dim=-1).sum(-1)).sum(-1).mean()
            mse = (recon - x_flat).pow(2).sum(-1).mean()
            if self.training:
                self._update_stats((latents > 0).any(0), batch, None)
            losses = Losses(mse + self.config.l1_coef * sparsity, mse, sparsity, zero)
            return DictionaryOutput(latents, recon.view_as(xn), losses)

        code, values, acts, scores, cutoff = self._select(x_flat, w_enc, batch, k)
        values = encode_gather(values, x_flat, w_enc, self.b_enc, code)
        recon = sparse_decode(values, w_dec, code) + b_dec
        mse = (recon - x_flat).pow(2).sum(-1).mean()
        auxk = zero
        if self.training and self.config.aux_k_alpha > 0:
            auxk = self._auxk_loss(x_flat, recon, acts, scores, w_enc, w_dec)
        if self.training:
            fired = torch.zeros(self.config.width, dtype=torch.bool, device=x_flat.device)
            fired[code.cols] = True
            self._update_stats(fired, batch, cutoff if code.nnz else None)
        losses = Losses(mse + self.config.aux_k_alpha * auxk, mse, zero, auxk)
        return DictionaryOutput(code.to_dense(values), recon.view_as(xn), losses)

    @torch.no_grad()
    def _select(
        self, x_flat: Tensor, w_enc: Tensor, batch: int, k: int | None
    ) -> tuple[SparseCode, Tensor, Tensor, Tensor, float]:
        """Dense encoder pass without autograd, then the active set and its values."""
        acts = torch.relu_(torch.addmm(self.b_enc, x_flat, w_enc.T))
        scores = acts * self.W_dec.norm(dim=-1).sum(-1)
        theta = float(self.threshold)
        if self.training or theta < 0:
            k_total = (k if k is not None else self.config.k) * batch
            code, cutoff = batch_topk(scores, k_total, hint=self._cutoff_hint)
            self._cutoff_hint = cutoff
        else:
            code, cutoff = threshold_select(scores, theta), theta
        return code, acts[code.rows, code.cols], acts, scores, cutoff

    def _auxk_loss(
        self, x_flat: Tensor, recon: Tensor, acts: Tensor, scores: Tensor, w_enc: Tensor,
        w_dec: Tensor,
    ) -> Tensor:
        dead = self.dead_mask()
        if not bool(dead.any()):
            return x_flat.new_zeros(())
        columns = dead.nonzero().squeeze(1)
        with torch.no_grad():
            code, flat = rowwise_topk(
                scores[:, columns], columns, self.config.effective_aux_k, self.config.width
            )
            values = acts[:, columns].reshape(-1)[flat]
        values = encode_gather(values, x_flat, w_enc, self.b_enc, code)
        residual = (x_flat - recon).detach()
        return (sparse_decode(values, w_dec, code) - residual).pow(2).sum(-1).mean()

    @torch.no_grad()
    def _update_stats(self, fired: Tensor, batch: int, cutoff: float | None) -> None:
        self.tokens_since_fired.add_(batch).masked_fill_(fired, 0)
        if cutoff is not None:
            theta = float(self.threshold)
            decay = self.config.threshold_decay
            new = cutoff if theta < 0 else decay * theta + (1.0 - decay) * cutoff
            self.threshold.fill_(new)

    # ---- convenience ------------------------------------------------------------------------
    def encode(self, x: Tensor) -> Tensor:
        """Raw activations -> latents ``(B, F)`` (sparsified as in :meth:`forward`)."""
        return self.forward(x).latents

    def decode(self, latents: Tensor) -> Tensor:
        """Latents ``(B, F)`` -> raw reconstruction (the input's shape)."""
        recon = latents @ self.W_dec.reshape(self.config.width, -1) + self.b_dec.reshape(-1)
        recon = recon.view(latents.shape[0], self.n_models, self.config.d_in)
        return self.format_output(self.normalizer.denormalize(recon))

    def decoder_norms(self) -> Tensor:
        """``(F, M)`` norms ``‖d_i^m‖`` (normalised space)."""
        return self.W_dec.detach().norm(dim=-1)

    def dead_mask(self) -> Tensor:
        """``(F,)`` bool: latents that have not fired for ``config.dead_tokens`` tokens."""
        return self.tokens_since_fired >= self.config.dead_tokens

    # ---- persistence ------------------------------------------------------------------------
    @classmethod
    def _build(cls, config: DictionaryConfig, n_models: int) -> SparseDictionary:
        return cls(config, n_models)

    def save(self, path: str | Path) -> Path:
        """Write ``dictionary.safetensors`` + ``config.json`` into directory ``path``."""
        path = Path(path)
        header = {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": self.kind}
        save_tensors(
            path / WEIGHTS_FILE, self.state_dict(), {k: str(v) for k, v in header.items()}
        )
        write_json(
            path / CONFIG_FILE,
            {**header, "n_models": self.n_models, "config": self.config.to_dict()},
        )
        return path

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> SparseDictionary:
        """Load a dictionary saved by :meth:`save`; the class comes from ``config.json``.

        Called on a subclass, the saved kind must match it.  Any mismatch between the tensors
        and the config (e.g. a different width) raises :class:`DifflensError`.
        """
        path = Path(path)
        meta = read_json(path / CONFIG_FILE, "dictionary config")
        if meta.get("format") != FORMAT:
            raise DifflensError(f"{path / CONFIG_FILE} is not a difflens dictionary config")
        version = meta.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise DifflensError(
                f"{path} has dictionary format version {version}; this difflens reads up to "
                f"{FORMAT_VERSION}: upgrade difflens"
            )
        kind = meta.get("kind")
        target = SparseDictionary._registry.get(str(kind))
        if target is None or (cls.kind and cls is not target):
            raise DifflensError(
                f"{path} holds a dictionary of kind {kind!r}, which {cls.__name__}.load cannot "
                "read; use load_dictionary() or the matching class"
            )
        module = target._build(DictionaryConfig.from_dict(meta["config"]), int(meta["n_models"]))
        tensors, _ = load_tensors(path / WEIGHTS_FILE, "dictionary weights")
        check_state(
            module.state_dict(), tensors, path / WEIGHTS_FILE,
            "the weights and config.json come from different dictionaries: re-save the "
            "dictionary or restore the matching config.json",
        )
        module.load_state_dict(tensors)
        return module.to(device)

