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

BatchTopK forwards compute along one of two paths with the same result (the same latents, the
same losses and gradients up to float rounding): ``"sparse"`` (:mod:`.sparse_ops`: only the
active entries after the dense encoder) or ``"dense"`` (masked dense latents, dense matrix
products).  ``DictionaryConfig.compute_path="auto"`` measures both at the first training
forward of each shape and keeps the faster (:meth:`SparseDictionary._path_for`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, NamedTuple, Protocol

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
    time_calls,
)

BASE, FT = 0, 1
"""Index of the base and the finetuned model along the model axis of paired inputs."""

FORMAT = "difflens-dictionary"
FORMAT_VERSION = 1
WEIGHTS_FILE = "dictionary.safetensors"
CONFIG_FILE = "config.json"

_MEASURED: dict[str, dict[str, Any]] = {}
"""Path timings of this process by shape key (see ``SparseDictionary._path_key``): a second
dictionary of the same shape on the same device (e.g. a run resumed in the same process) takes
the same path without timing again."""


def forget_path_timings() -> None:
    """Drop this process's path timings (the next ``"auto"`` training forward measures again)."""
    _MEASURED.clear()


def _bucket(n: int) -> int:
    """``n`` rounded up to a power of two (0 stays 0): k annealing and a slowly growing set of
    dead latents re-time the paths a few times, not at every step."""
    return 0 if n <= 0 else 1 << (n - 1).bit_length()


class BatchGroup(Protocol):
    """The batch-level choices of a training forward made over a batch split across processes
    (implemented by :class:`~difflens.methods.dictionary.train.RankGroup`)."""

    def select(self, scores: Tensor, k_total: int, hint: float | None
               ) -> tuple[SparseCode, float]:
        """:func:`batch_topk` of this process's ``scores`` ``(b, F)`` at the cutoff of the
        whole batch, ``k_total`` being this process's share of the active entries."""
        ...

    def stats(self, fired: Tensor, batch: int, cutoff: float | None
              ) -> tuple[Tensor, int, float | None]:
        """``(fired (F,) of the whole batch, its rows, its cutoff or None)`` for the dead-latent
        counters and θ."""
        ...


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
        self.path_choice: dict[str, dict[str, Any]] = {}
        """The path taken per shape key (``"B=… F=… D=… k<=… dead<=… aux_k=… device dtype"``):
        ``{"path": "dense"|"sparse", "source": "measured"|"reused"|"forced"}`` plus, when
        measured, ``"dense_ms"`` and ``"sparse_ms"`` (one forward + backward on the real batch).
        A trainer may save it and set it back on resume so the same path is taken."""
        # Set by data-parallel training (train.py): the batch-level choices of training
        # forwards (BatchTopK cutoff, fired latents, batch size) are made over every rank's rows.
        self.batch_group: BatchGroup | None = None

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
        if self.config.sparsity != "l1":
            return self._batchtopk(xn, k, self._path_for(xn, k))
        batch = xn.shape[0]
        x_flat = xn.reshape(batch, -1)
        w_enc = self.W_enc.reshape(self.config.width, -1)
        w_dec = self.W_dec.reshape(self.config.width, -1)
        latents = torch.relu(torch.addmm(self.b_enc, x_flat, w_enc.T))
        recon = torch.addmm(self.b_dec.reshape(-1), latents, w_dec)
        sparsity = (latents * self.W_dec.norm(dim=-1).sum(-1)).sum(-1).mean()
        mse = (recon - x_flat).pow(2).sum(-1).mean()
        if self.training:
            self._update_stats((latents > 0).any(0), batch, None)
        losses = Losses(mse + self.config.l1_coef * sparsity, mse, sparsity, x_flat.new_zeros(()))
        return DictionaryOutput(latents, recon.view_as(xn), losses)

    def _batchtopk(
        self, xn: Tensor, k: int | None, path: str, *, update: bool = True
    ) -> DictionaryOutput:
        """The BatchTopK forward of ``(B, M, d)`` along ``path``; ``update=False`` leaves the
        running statistics alone (the timing trials of :meth:`_measure_paths`)."""
        batch = xn.shape[0]
        x_flat = xn.reshape(batch, -1)
        w_enc = self.W_enc.reshape(self.config.width, -1)
        w_dec = self.W_dec.reshape(self.config.width, -1)
        b_dec = self.b_dec.reshape(-1)
        zero = x_flat.new_zeros(())
        dense_acts = None
        if path == "dense":
            # The same addmm as _select's, so the same numbers and the same selection; kept in
            # the graph so that plain autograd gives the encoder gradient.
            dense_acts = torch.relu(torch.addmm(self.b_enc, x_flat, w_enc.T))
            code, _, acts, scores, cutoff = self._select(
                x_flat, w_enc, batch, k, acts=dense_acts.detach()
            )
            latents = dense_acts * code.mask()
            recon = torch.addmm(b_dec, latents, w_dec)
        else:
            code, values, acts, scores, cutoff = self._select(x_flat, w_enc, batch, k)
            values = encode_gather(values, x_flat, w_enc, self.b_enc, code)
            recon = sparse_decode(values, w_dec, code) + b_dec
        mse = (recon - x_flat).pow(2).sum(-1).mean()
        auxk = zero
        if self.training and self.config.aux_k_alpha > 0:
            auxk = self._auxk_loss(x_flat, recon, acts, scores, w_enc, w_dec, dense_acts)
        if self.training and update:
            if dense_acts is not None:
                fired = code.mask().any(0)
            else:
                fired = torch.zeros(self.config.width, dtype=torch.bool, device=x_flat.device)
                fired[code.cols] = True
            self._update_stats(fired, batch, cutoff if code.nnz else None)
        losses = Losses(mse + self.config.aux_k_alpha * auxk, mse, zero, auxk)
        if dense_acts is None:
            latents = code.to_dense(values)
        return DictionaryOutput(latents, recon.view_as(xn), losses)

    @torch.no_grad()
    def _select(
        self, x_flat: Tensor, w_enc: Tensor, batch: int, k: int | None,
        acts: Tensor | None = None,
    ) -> tuple[SparseCode, Tensor, Tensor, Tensor, float]:
        """Dense encoder pass without autograd (unless the dense path passes its ``acts``
        ``(B, F)``), then the active set and its values."""
        if acts is None:
            acts = torch.relu_(torch.addmm(self.b_enc, x_flat, w_enc.T))
        scores = acts * self.W_dec.norm(dim=-1).sum(-1)
        theta = float(self.threshold)
        if self.training or theta < 0:
            k_total = (k if k is not None else self.config.k) * batch
            if self.batch_group is not None and self.training:
                code, cutoff = self.batch_group.select(scores, k_total, self._cutoff_hint)
            else:
                code, cutoff = batch_topk(scores, k_total, hint=self._cutoff_hint)
            self._cutoff_hint = cutoff
        else:
            code, cutoff = threshold_select(scores, theta), theta
        return code, acts[code.rows, code.cols], acts, scores, cutoff

    def _auxk_loss(
        self, x_flat: Tensor, recon: Tensor, acts: Tensor, scores: Tensor, w_enc: Tensor,
        w_dec: Tensor, dense_acts: Tensor | None = None,
    ) -> Tensor:
        """AuxK loss; ``dense_acts`` ``(B, F)`` (in the graph) selects the dense path."""
        dead = self.dead_mask()
        if not bool(dead.any()):
            return x_flat.new_zeros(())
        columns = dead.nonzero().squeeze(1)
        with torch.no_grad():
            code, flat = rowwise_topk(
                scores[:, columns], columns, self.config.effective_aux_k, self.config.width
            )
        residual = (x_flat - recon).detach()
        if dense_acts is not None:
            # Dense over the dead columns only: a (B, C) @ (C, D) product, C = number dead.
            batch, every = x_flat.shape[0], columns.numel() == self.config.width
            keep = torch.zeros(batch * columns.numel(), dtype=torch.bool, device=flat.device)
            keep = keep.index_fill_(0, flat, True).view(batch, -1)
            dead_acts = dense_acts if every else dense_acts[:, columns]
            dead_dec = w_dec if every else w_dec[columns]
            return ((dead_acts * keep) @ dead_dec - residual).pow(2).sum(-1).mean()
        values = encode_gather(acts[:, columns].reshape(-1)[flat], x_flat, w_enc, self.b_enc,
                               code)
        return (sparse_decode(values, w_dec, code) - residual).pow(2).sum(-1).mean()

    # ---- dense or sparse --------------------------------------------------------------------
    def _path_key(self, xn: Tensor, k: int | None) -> str:
        """What the relative cost of the two paths depends on: shapes, k, the number of dead
        latents (AuxK's size), device and dtype."""
        dead = int(self.dead_mask().sum()) if self.config.aux_k_alpha > 0 else 0
        k = k if k is not None else self.config.k
        return (f"B={xn.shape[0]} F={self.config.width} D={xn[0].numel()} k<={_bucket(k)} "
                f"dead<={_bucket(dead)} aux_k={self.config.effective_aux_k} {xn.device} "
                f"{str(xn.dtype).removeprefix('torch.')}")

    def _path_for(self, xn: Tensor, k: int | None) -> str:
        """``"dense"`` or ``"sparse"`` for this forward (see ``DictionaryConfig.compute_path``).

        ``"auto"`` measures at the first training forward (with autograd on) of each shape key
        and reuses the measurement afterwards; other forwards (eval, no-grad) take the sparse
        path, whose forward alone is the cheaper one when ``k ≪ F``.
        """
        forced = self.config.compute_path
        if forced != "auto" or not (self.training and torch.is_grad_enabled()):
            path = "sparse" if forced == "auto" else forced
            if forced != "auto" and self.training:
                self.path_choice.setdefault(self._path_key(xn, k),
                                            {"path": path, "source": "forced"})
            return path
        key = self._path_key(xn, k)
        entry = self.path_choice.get(key)
        if entry is None:
            if key in _MEASURED:
                entry = {**_MEASURED[key], "source": "reused"}
            else:
                entry = _MEASURED[key] = self._measure_paths(xn, k)
            self.path_choice[key] = entry
        return str(entry["path"])

    def _measure_paths(self, xn: Tensor, k: int | None) -> dict[str, Any]:
        """Time one forward + backward of each path on this batch and pick the faster.

        The trials leave everything as it was: gradients go to ``torch.autograd.grad`` (not to
        ``.grad``), nothing is optimised, the running statistics are not updated and the
        cutoff hint (which never changes a result) is restored.  The step itself then runs
        once more, on the chosen path, exactly as without the trials.
        """
        params = [p for p in self.parameters() if p.requires_grad]
        hint = self._cutoff_hint

        def trial(path: str):
            def run() -> None:
                total = self._batchtopk(xn, k, path, update=False).losses.total
                if params and total.requires_grad:
                    torch.autograd.grad(total, params, allow_unused=True)
            return run

        # Over a batch split across processes every trial makes collective calls (the global
        # cutoff), so every rank must run the same number of them: no extra rounds on a close
        # call there; the ranks then decide on their summed timings, so all take one path.
        group = getattr(self, "batch_group", None)
        rounds = 3 if group is not None else 9
        try:
            seconds = time_calls({p: trial(p) for p in ("dense", "sparse")}, xn.device,
                                 repeats=3, max_repeats=rounds)
        finally:
            self._cutoff_hint = hint
        if group is not None and hasattr(group, "agree"):
            seconds = group.agree(seconds)
        path = min(seconds, key=seconds.__getitem__)
        return {"path": path, "source": "measured",
                **{f"{p}_ms": round(t * 1000, 3) for p, t in seconds.items()}}

    @torch.no_grad()
    def _update_stats(self, fired: Tensor, batch: int, cutoff: float | None) -> None:
        if self.batch_group is not None:
            fired, batch, cutoff = self.batch_group.stats(fired, batch, cutoff)
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

