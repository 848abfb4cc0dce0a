"""Training loop for crosscoders and diff-SAEs over a stream of activation batches.

Adam with linear warm-up and a final linear decay; optional k annealing; periodic atomic
checkpoints from which a run resumes **bit-identically** to an uninterrupted one (on CPU; CUDA
kernels are not guaranteed deterministic).  No shuffling happens here: the stream's order is
the training order (shuffle when building the activation cache).

Data: ``data`` is either an iterable of raw activation chunks (any number of rows each; they
are re-cut into batches of ``TrainConfig.batch_size`` rows) read from its start - on resume the
rows already trained on are read and skipped - or a callable ``data(start_row)`` returning such
an iterable that starts at row ``start_row`` (for sources that can seek, so resuming does not
re-read them).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Iterator
from itertools import chain
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor
from tqdm import tqdm

from difflens.errors import DifflensError
from difflens.methods.dictionary.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from difflens.methods.dictionary.config import TrainConfig
from difflens.methods.dictionary.dictionary import SparseDictionary
from difflens.methods.dictionary.metrics import fve
from difflens.methods.dictionary.normalize import NormStats
from difflens.models.device import is_gpu

Data = Iterable[Tensor] | Callable[[int], Iterable[Tensor]]


class TrainResult(NamedTuple):
    """What :meth:`Trainer.fit` returns."""

    step: int
    """Steps completed (``< TrainConfig.steps`` only if the data ran out)."""
    resumed_from: int | None
    """Step of the checkpoint this run resumed from, if any."""
    log: list[dict[str, Any]]
    """One record every ``log_every`` steps: step, lr, k, loss terms, fve (per model), l0,
    dead fraction."""


def learning_rate_at(step: int, config: TrainConfig, base_lr: float) -> float:
    """Learning rate of (0-based) ``step``: linear warm-up, flat, linear decay to 0."""
    warm = min(1.0, (step + 1) / config.warmup_steps) if config.warmup_steps > 0 else 1.0
    decay_from = int(config.decay_start * config.steps)
    if step < decay_from or config.steps <= decay_from:
        return base_lr * warm
    return base_lr * warm * max(0.0, (config.steps - step) / (config.steps - decay_from))


def k_at(step: int, k: int, config: TrainConfig) -> int:
    """BatchTopK k of ``step``: linear from ``k_anneal_start`` to ``k`` over the anneal steps."""
    start = config.k_anneal_start
    if start is None or config.k_anneal_steps <= 0 or step >= config.k_anneal_steps:
        return k
    return round(start + (k - start) * step / config.k_anneal_steps)


def _adam(dictionary: SparseDictionary, lr: float) -> torch.optim.Optimizer:
    """Adam, fused where this torch supports it (one pass over the parameters instead of ~10:
    on CPU about 8x faster for large dictionaries; also deterministic)."""
    try:
        return torch.optim.Adam(dictionary.parameters(), lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(dictionary.parameters(), lr=lr)


def rebatch(chunks: Iterable[Tensor], batch_size: int, skip_rows: int = 0) -> Iterator[Tensor]:
    """Re-cut chunks of rows into batches of exactly ``batch_size`` rows (a short tail is
    dropped), after skipping the first ``skip_rows`` rows.  Slices are views: no copy unless a
    batch straddles two chunks."""
    pending: list[Tensor] = []
    count = 0
    for chunk in chunks:
        if skip_rows:
            if chunk.shape[0] <= skip_rows:
                skip_rows -= chunk.shape[0]
                continue
            chunk, skip_rows = chunk[skip_rows:], 0
        pending.append(chunk)
        count += chunk.shape[0]
        while count >= batch_size:
            joined = pending[0] if len(pending) == 1 else torch.cat(pending)
            yield joined[:batch_size]
            rest = joined[batch_size:]
            pending, count = ([rest] if rest.shape[0] else []), rest.shape[0]


class Trainer:
    """Trains ``dictionary`` (moved to ``config.device``) with Adam.

    ``out_dir``: where checkpoints (``out_dir/checkpoints``) and the final dictionary
    (``out_dir/dictionary``) go; ``None`` trains in memory without checkpoints.
    """

    def __init__(
        self, dictionary: SparseDictionary, config: TrainConfig, out_dir: str | Path | None = None
    ) -> None:
        if is_gpu(config.device) and not torch.cuda.is_available():
            raise DifflensError("TrainConfig.device is 'cuda' but no GPU is visible; use 'cpu'")
        self.dictionary = dictionary.to(config.device)
        self.config = config
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.base_lr = config.learning_rate(dictionary.config.width)
        self.optimizer = _adam(dictionary, self.base_lr)
        self.step = 0
        self.log: list[dict[str, Any]] = []

    @property
    def checkpoint_root(self) -> Path | None:
        return self.out_dir / "checkpoints" if self.out_dir is not None else None

    def resume(self) -> int | None:
        """Load the latest checkpoint in ``out_dir`` if there is one; returns its step."""
        root = self.checkpoint_root
        path = latest_checkpoint(root) if root is not None else None
        if path is None:
            return None
        meta = load_checkpoint(path, self.dictionary, self.optimizer)
        self.step = int(meta["step"])
        self.log = list(meta.get("log", []))
        return self.step

    def save_checkpoint(self) -> Path | None:
        """Write a checkpoint of the current step (no-op without ``out_dir``)."""
        if self.checkpoint_root is None:
            return None
        extra = {"train_config": self.config.to_dict(), "log": self.log}
        return save_checkpoint(
            self.checkpoint_root, self.step, self.dictionary, self.optimizer, extra,
            self.config.keep_checkpoints,
        )

    def train_step(self, batch: Tensor) -> dict[str, Any] | None:
        """One optimiser step on raw ``batch``; returns a log record on logging steps."""
        cfg, model = self.config, self.dictionary
        model.train()
        lr = learning_rate_at(self.step, cfg, self.base_lr)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        k = k_at(self.step, model.config.k, cfg)
        batch = batch.to(cfg.device, non_blocking=True)
        out = model(batch, k=k)
        self.optimizer.zero_grad(set_to_none=True)
        out.losses.total.backward()
        self.optimizer.step()
        self.step += 1
        if self.step % cfg.log_every and self.step != cfg.steps:
            return None
        losses = {name: float(v.detach()) for name, v in out.losses._asdict().items()}
        x = model.prepare_input(batch)  # (B, M, d) raw; FVE is scale-free per model
        record = {
            "step": self.step, "lr": lr, "k": k, **losses,
            "fve": fve(x, out.reconstruction.reshape(x.shape)).tolist(),
            "l0": float((out.latents != 0).sum(-1).float().mean()),
            "dead": float(model.dead_mask().float().mean()),
        }
        self.log.append(record)
        return record

    def fit(self, data: Data, *, resume: bool = True) -> TrainResult:
        """Train until ``config.steps`` (or until the data runs out); see the module doc."""
        cfg = self.config
        resumed = self.resume() if resume else None
        if self.step >= cfg.steps:  # finished before: nothing to read
            return TrainResult(self.step, resumed, self.log)
        start_row = self.step * cfg.batch_size
        chunks = data(start_row) if callable(data) else data
        batches = rebatch(chunks, cfg.batch_size, 0 if callable(data) else start_row)
        if not self.dictionary.normalizer.is_fitted and cfg.norm_sample_rows > 0:
            batches = self._fit_normalizer(batches)
        bar = tqdm(
            total=cfg.steps, initial=self.step, disable=not cfg.progress, dynamic_ncols=True,
            desc=f"train {self.dictionary.kind}",
        )
        try:
            for batch in batches:
                if self.step >= cfg.steps:
                    break
                record = self.train_step(batch)
                bar.update(1)
                if record is not None:
                    bar.set_postfix(
                        loss=f"{record['total']:.4g}",
                        fve=",".join(f"{v:.3f}" for v in record["fve"]),
                        l0=f"{record['l0']:.1f}", dead=f"{record['dead']:.3f}",
                    )
                if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                    self.save_checkpoint()
        finally:
            bar.close()
        if self.step < cfg.steps:
            warnings.warn(
                f"the data ran out after {self.step} of {cfg.steps} steps", stacklevel=2
            )
        self.save_checkpoint()
        if self.out_dir is not None:
            self.dictionary.save(self.out_dir / "dictionary")
        return TrainResult(self.step, resumed, self.log)

    def _fit_normalizer(self, batches: Iterator[Tensor]) -> Iterator[Tensor]:
        """Estimate the scales on the first rows, then hand those rows back for training."""
        model, seen, head = self.dictionary, 0, []
        stats = NormStats(model.n_models)
        for batch in batches:
            head.append(batch)
            stats.update(model.prepare_input(batch))
            seen += batch.shape[0]
            if seen >= self.config.norm_sample_rows:
                break
        if head:
            model.normalizer.set_scales(stats.scales(model.config.effective_norm_target))
        return chain(head, batches)
