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

Data parallel (under ``torchrun``, :mod:`difflens.distributed`): the dictionary is wrapped in
``DistributedDataParallel`` (gradients averaged over ranks).  Every rank reads the *same*
stream and keeps the ``r``-th contiguous ``B / N`` rows of every global batch of ``B =
batch_size`` rows, so the global batches - and the data order - are the single-process ones at
any number of ranks ``N`` (``B`` must be a multiple of ``N``); the price is that every rank
reads (and verifies) every row.  Batch-level choices are made over the global batch
(:class:`RankGroup`): the BatchTopK cutoff, the fired latents and row count behind the
dead-latent counters and θ, the normaliser fit; logged values are those of the global batch.
So a run on N ranks equals the 1-process run up to float32 rounding (matrix products over
fewer rows, gradients summed in two parts), and a checkpoint resumes at any number of ranks.
Rank 0 alone writes checkpoints and the dictionary.

``data_split="shards"`` (opt-in): ``data`` is instead this rank's *own* stream (e.g. a
:class:`~.cache.CacheReader` over its shards) and every step takes its next ``B / N`` rows, so
after ``s`` steps each rank has consumed exactly ``s · B / N`` rows of its stream - the resume
position.  The batch-level choices stay global as above; the global batches are no longer the
1-process ones, so checkpoints record the split and ``N`` and resume only at the same ``N``.
Alone (``N = 1``) both splits are the same.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterable, Iterator
from itertools import chain
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor
from tqdm import tqdm

from difflens import distributed as dd
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
from difflens.methods.dictionary.sparse_ops import SparseCode, largest
from difflens.models.device import is_gpu

Data = Iterable[Tensor] | Callable[[int], Iterable[Tensor]]
log = logging.getLogger(__name__)


class TrainResult(NamedTuple):
    """What :meth:`Trainer.fit` returns."""

    step: int
    """Steps completed (``< TrainConfig.steps`` only if the data ran out)."""
    resumed_from: int | None
    """Step of the checkpoint this run resumed from, if any."""
    log: list[dict[str, Any]]
    """One record every ``log_every`` steps: step, lr, k, loss terms, fve (per model), l0,
    dead fraction."""
    paths: dict[str, Any] | None = None
    """The dense/sparse choice per shape key (``SparseDictionary.path_choice``: path, whether
    measured, reused or forced, and both timings in ms)."""


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


# ---- data parallel: batch-level choices over every rank's rows -------------------------------
def local_candidates(scores: Tensor, k_global: int, hint: float | None = None) -> Tensor:
    """This rank's ``min(k_global, b·F)`` largest entries of ``scores`` ``(b, F)`` (unordered).

    Every entry of the global top ``k_global`` lies in its own rank's top ``k_global``, so these
    candidates of all ranks contain the global top.  ``hint`` (a guess of the cutoff) narrows
    the search as in :func:`~.sparse_ops.batch_topk` when enough entries reach ``0.8 · hint``;
    the result does not depend on it.  The size is the same on every rank (equal shares)."""
    return largest(scores, k_global, hint)


def global_cutoff(candidates: Tensor, k_global: int) -> float:
    """The BatchTopK cutoff of the global batch from every rank's :func:`local_candidates`
    ``(N·c,)``: the ``k_global``-th largest score, or - with fewer positive scores than that -
    the smallest positive one (all positive scores are then among the candidates); 0.0 when
    nothing is positive.  Exactly :func:`~.sparse_ops.batch_topk`'s cutoff of the whole batch."""
    count = min(int(k_global), candidates.numel())
    if count <= 0:
        return 0.0
    cutoff = float(torch.topk(candidates, count, sorted=False).values.min())
    if cutoff <= 0:
        positive = candidates[candidates > 0]
        cutoff = float(positive.min()) if positive.numel() else 0.0
    return cutoff


def select_at(scores: Tensor, cutoff: float) -> SparseCode:
    """The row-major pattern of the entries of ``scores`` ``(b, F)`` kept at the global
    ``cutoff``: those ``>= cutoff`` (none when it is 0, i.e. nothing was positive)."""
    mask = scores >= cutoff if cutoff > 0 else torch.zeros_like(scores, dtype=torch.bool)
    idx = mask.nonzero()
    return SparseCode(idx[:, 0], idx[:, 1], scores.shape[0], scores.shape[1])


class RankGroup:
    """The :class:`~.dictionary.BatchGroup` of a data-parallel run over ``size`` ranks with
    equal shares of every batch: BatchTopK keeps the global batch's ``k·B`` largest scores
    (each rank sends its ``k·B`` largest, a cheap ``all_gather``; the cutoff is then the same
    float on every rank), and the dead-latent counters see a latent fire when it fired on any
    rank and count the global batch's rows.  ``gather`` / ``reduce`` default to
    :func:`difflens.distributed.all_gather_rows` / ``all_reduce_sum`` (replaceable in tests)."""

    def __init__(self, size: int, gather: Callable[[Tensor], Tensor] | None = None,
                 reduce: Callable[[Tensor], Tensor] | None = None) -> None:
        self.size = size
        self._gather = gather or dd.all_gather_rows
        self._reduce = reduce or dd.all_reduce_sum
        self._cutoff: float | None = None  # this step's global cutoff, for stats()

    def select(self, scores: Tensor, k_total: int, hint: float | None
               ) -> tuple[SparseCode, float]:
        k_global = k_total * self.size  # equal shares: k per row over every rank's rows
        candidates = local_candidates(scores, k_global, hint)
        cutoff = global_cutoff(self._gather(candidates), k_global)
        self._cutoff = cutoff
        return select_at(scores, cutoff), cutoff

    def stats(self, fired: Tensor, batch: int, cutoff: float | None
              ) -> tuple[Tensor, int, float | None]:
        # The local "nothing selected" (cutoff None) may differ between ranks; the global cutoff
        # is positive exactly when the global batch selected something.
        chosen, self._cutoff = self._cutoff, None
        fired = (self._reduce(fired.to(torch.int32)) > 0).to(fired.device)
        return fired, batch * self.size, chosen if chosen else None


    def agree(self, seconds: dict[str, float]) -> dict[str, float]:
        """Per-path timings summed over the ranks (the same numbers on every rank), so the
        dense/sparse choice is one decision for the whole group."""
        names = sorted(seconds)
        total = self._reduce(torch.tensor([seconds[n] for n in names], dtype=torch.float64))
        return {n: float(t) / self.size for n, t in zip(names, total.tolist(), strict=True)}


def _refuse(message: str) -> BaseException:
    """A one-line error raised on rank 0 for a condition every rank sees; the others leave
    quietly (one line in all, not one per rank)."""
    return DifflensError(message) if dd.is_main() else dd.PeerExit()


# ---- the trainer ------------------------------------------------------------------------------
class Trainer:
    """Trains ``dictionary`` (moved to ``config.device``) with Adam.

    ``out_dir``: where checkpoints (``out_dir/checkpoints``) and the final dictionary
    (``out_dir/dictionary``) go; ``None`` trains in memory without checkpoints.  Under torchrun
    with several ranks the training is data parallel (module docstring); only rank 0 writes.
    ``data_split``: ``"stream"`` (every rank gets the global stream) or ``"shards"`` (every
    rank gets its own; module docstring).
    """

    def __init__(
        self, dictionary: SparseDictionary, config: TrainConfig, out_dir: str | Path | None = None,
        data_split: str = "stream",
    ) -> None:
        if is_gpu(config.device) and not torch.cuda.is_available():
            raise DifflensError("TrainConfig.device is 'cuda' but no GPU is visible; use 'cpu'")
        self.rank, self.world_size = dd.world()
        if data_split not in ("stream", "shards"):
            raise DifflensError(f"unknown data split {data_split!r}; use stream or shards")
        self.data_split = data_split
        if config.batch_size % self.world_size:
            raise _refuse(f"the batch size {config.batch_size} is not a multiple of the "
                          f"{self.world_size} ranks: every rank trains on an equal share of each "
                          "batch; pass a --batch-size divisible by --nproc_per_node")
        self.dictionary = dictionary.to(config.device)
        self.config = config
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.base_lr = config.learning_rate(dictionary.config.width)
        self.optimizer = _adam(dictionary, self.base_lr)
        self.step = 0
        self.log: list[dict[str, Any]] = []
        self._module: Any = self.dictionary  # what forwards: the DDP wrapper when data parallel

    @property
    def parallel(self) -> bool:
        return self.world_size > 1

    @property
    def checkpoint_root(self) -> Path | None:
        return self.out_dir / "checkpoints" if self.out_dir is not None else None

    def resume(self) -> int | None:
        """Load the latest checkpoint in ``out_dir`` if there is one (rank 0's choice, on every
        rank); returns its step."""
        root = self.checkpoint_root
        path = dd.from_main(latest_checkpoint(root) if root is not None else None)
        if path is None:
            return None
        meta = load_checkpoint(path, self.dictionary, self.optimizer)
        self._check_resume(path, meta.get("data_split", "stream"), int(meta.get("world_size", 1)))
        self.step = int(meta["step"])
        self.log = list(meta.get("log", []))
        # The dense/sparse choices measured before: a resumed run takes the same paths, so it
        # continues as the uninterrupted run would have (the two differ by float rounding).
        self.dictionary.path_choice.update(meta.get("path_choice") or {})
        return self.step

    def _check_resume(self, path: Path, split: str, world_size: int) -> None:
        """One line unless the checkpoint's data split and ranks continue this run's stream:
        "stream" at any number of ranks; "shards" only at its own (each rank's position is
        in its own shards, which depend on the number of ranks)."""
        if split != self.data_split:
            raise _refuse(f"the checkpoint {path} was written with --data-split {split}; rerun "
                          f"with --data-split {split}, or train into a new --out directory")
        if split == "shards" and world_size != self.world_size:
            launch = ("without torchrun" if world_size == 1
                      else f"under `torchrun --nproc_per_node {world_size}`")
            raise _refuse(f"the checkpoint {path} was written by {world_size} rank(s) with "
                          f"--data-split shards, which resumes only on as many ranks, not "
                          f"{self.world_size}; rerun {launch}, or train into a new --out "
                          "directory")

    def save_checkpoint(self) -> Path | None:
        """Write a checkpoint of the current step (no-op without ``out_dir`` or off rank 0)."""
        if self.checkpoint_root is None or not dd.is_main():
            return None
        extra = {"train_config": self.config.to_dict(), "log": self.log,
                 "path_choice": self.dictionary.path_choice, "data_split": self.data_split,
                 "world_size": self.world_size}
        return save_checkpoint(
            self.checkpoint_root, self.step, self.dictionary, self.optimizer, extra,
            self.config.keep_checkpoints,
        )

    def train_step(self, batch: Tensor) -> dict[str, Any] | None:
        """One optimiser step on raw ``batch`` (this rank's share when data parallel); returns
        a log record on logging steps."""
        cfg, model = self.config, self.dictionary
        model.train()
        lr = learning_rate_at(self.step, cfg, self.base_lr)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        k = k_at(self.step, model.config.k, cfg)
        batch = batch.to(cfg.device, non_blocking=True)
        what = f"training step {self.step + 1}"
        out = dd.guarded(what, lambda: self._module(batch, k=k))
        self.optimizer.zero_grad(set_to_none=True)
        dd.guarded(what, out.losses.total.backward)  # DDP averages the gradients here
        self.optimizer.step()
        self.step += 1
        if self.step % cfg.log_every and self.step != cfg.steps:
            return None
        x = model.prepare_input(batch)  # (b, M, d) raw; FVE is scale-free per model
        means = torch.stack([*(v.detach().double() for v in out.losses),
                             (out.latents != 0).sum(-1).float().mean().double()])
        means = self._mean_over_ranks(means)  # equal shares: the global batch's means
        losses = dict(zip(out.losses._fields, means[:-1].tolist(), strict=True))
        record = {
            "step": self.step, "lr": lr, "k": k, **losses,
            "fve": self._fve(x, out.reconstruction.reshape(x.shape)).tolist(),
            "l0": float(means[-1]),
            "dead": float(model.dead_mask().float().mean()),
        }
        self.log.append(record)
        return record

    def _mean_over_ranks(self, values: Tensor) -> Tensor:
        return dd.all_reduce_sum(values) / self.world_size if self.parallel else values.cpu()

    def _fve(self, x: Tensor, recon: Tensor) -> Tensor:
        """:func:`fve` of the global batch (``x``, ``recon``: this rank's ``(b, M, d)``)."""
        if not self.parallel:
            return fve(x, recon)
        x, recon = x.detach().double(), recon.detach().double()
        mean = dd.all_reduce_sum(x.sum(0)) / (x.shape[0] * self.world_size)  # (M, d)
        sums = torch.stack([(x - recon).pow(2).sum(dim=(0, 2)),
                            (x - mean.to(x.device)).pow(2).sum(dim=(0, 2))])
        err, var = dd.all_reduce_sum(sums)
        return (1 - err / var).float()

    def fit(self, data: Data, *, resume: bool = True) -> TrainResult:
        """Train until ``config.steps`` (or until the data runs out); see the module doc."""
        cfg = self.config
        resumed = self.resume() if resume else None
        if self.step >= cfg.steps:  # finished before: nothing to read
            return TrainResult(self.step, resumed, self.log, dict(self.dictionary.path_choice))
        # "shards": the data is this rank's own stream, B / N rows of it a step; "stream": the
        # global stream, of which this rank keeps its contiguous share of every global batch.
        own = self.data_split == "shards"
        rows = cfg.batch_size // self.world_size if own else cfg.batch_size
        start_row = self.step * rows
        chunks = data(start_row) if callable(data) else data
        batches = rebatch(chunks, rows, 0 if callable(data) else start_row)
        if self.parallel:
            if not own:
                lo, hi = dd.shard_range(cfg.batch_size, self.rank, self.world_size)
                batches = (batch[lo:hi] for batch in batches)
            self._start_parallel()
        try:
            self._loop(batches)
        except Exception as exc:
            if self.parallel and not dd.is_main():
                # Rank 0 reports: the same error (with "stream" every rank reads the same data)
                # or, for one of this rank alone (a corrupt shard of its own with "shards"),
                # "another rank stopped responding" once this one leaves.
                log.debug("rank %d failed at step %d", self.rank, self.step, exc_info=True)
                if not isinstance(exc, DifflensError):
                    log.warning("rank %d failed at step %d: %s", self.rank, self.step,
                                " ".join(str(exc).split())[:300])
                raise dd.PeerExit() from None
            raise
        finally:
            self._end_parallel()
        if self.step < cfg.steps and dd.is_main():
            warnings.warn(
                f"the data ran out after {self.step} of {cfg.steps} steps", stacklevel=2
            )
        self.save_checkpoint()
        if self.out_dir is not None and dd.is_main():
            self.dictionary.save(self.out_dir / "dictionary")
        return TrainResult(self.step, resumed, self.log, dict(self.dictionary.path_choice))

    def _loop(self, batches: Iterator[Tensor]) -> None:
        cfg = self.config
        if not self.dictionary.normalizer.is_fitted and cfg.norm_sample_rows > 0:
            batches = self._fit_normalizer(batches)
        bar = tqdm(
            total=cfg.steps, initial=self.step, dynamic_ncols=True,
            disable=not cfg.progress or not dd.is_main(), desc=f"train {self.dictionary.kind}",
        )
        every = cfg.checkpoint_every
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
                if every and self.step % every == 0:
                    self.save_checkpoint()
                elif every and self.step > 1 and (self.step - 1) % every == 0:
                    # The test hook, one step after a checkpoint: that step's collectives
                    # needed rank 0, so the checkpoint it wrote before is complete on disk.
                    dd.fault_point()
        finally:
            bar.close()

    def _start_parallel(self) -> None:
        """Wrap the dictionary in DDP (its constructor broadcasts rank 0's state) and make its
        batch-level choices global."""
        from torch.nn.parallel import DistributedDataParallel

        device = next(self.dictionary.parameters()).device
        ids = [device.index if device.index is not None else torch.cuda.current_device()] \
            if device.type == "cuda" else None
        # Buffers (θ, dead-latent counters, scales) are kept equal by RankGroup: no broadcast.
        self._module = dd.guarded("the start of data-parallel training", lambda: (
            DistributedDataParallel(self.dictionary, device_ids=ids, broadcast_buffers=False)))
        self.dictionary.batch_group = RankGroup(self.world_size)

    def _end_parallel(self) -> None:
        self.dictionary.batch_group = None  # later forwards (analysis, eval) are local
        if self._module is not self.dictionary:
            import gc

            # DDP's reducer must go while the process group is alive: destroyed after it (at
            # exit, by the garbage collector) it aborted the process ("terminate called").
            self._module = self.dictionary
            gc.collect()

    def _fit_normalizer(self, batches: Iterator[Tensor]) -> Iterator[Tensor]:
        """Estimate the scales on the first rows, then hand those rows back for training
        (data parallel: the norms of every rank's share summed, the same rows as alone)."""
        model, seen, head = self.dictionary, 0, []
        stats = NormStats(model.n_models)
        for batch in batches:
            head.append(batch)
            stats.update(model.prepare_input(batch))
            seen += batch.shape[0] * self.world_size
            if seen >= self.config.norm_sample_rows:
                break
        if head:
            if self.parallel:
                stats.norm_sum = dd.all_reduce_sum(stats.norm_sum)
                stats.count *= self.world_size
            model.normalizer.set_scales(stats.scales(model.config.effective_norm_target))
        return chain(head, batches)
