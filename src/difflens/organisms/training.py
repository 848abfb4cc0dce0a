"""A plain, deterministic torch training loop for causal-LM finetunes on CPU or GPU.

No Trainer: an organism build is a few hundred steps of AdamW on padded batches, and a short
loop that is easy to read (and to make reproducible from one seed) beats a framework here.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class LoopSettings:
    """Optimisation settings of one training run."""

    steps: int
    """Optimizer steps."""
    batch_size: int
    """Sequences per step."""
    lr: float
    """Peak learning rate."""
    warmup: float = 0.1
    """Fraction of the steps spent warming the learning rate up linearly from 0."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Gradient clipping threshold (global L2 norm)."""
    seed: int = 0
    """Seed of the batch order."""


def lr_factor(step: int, steps: int, warmup_steps: int) -> float:
    """Linear warmup to 1 over ``warmup_steps``, then linear decay towards 0 at ``steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return max(0.0, (steps - step) / max(1, steps - warmup_steps))


def batch_indices(n: int, batch_size: int, steps: int, seed: int) -> Iterator[list[int]]:
    """``steps`` batches of example indices: seeded shuffled epochs, concatenated, so every
    batch is full and every example is seen once per epoch."""
    generator = torch.Generator().manual_seed(seed)
    order: list[int] = []
    for _ in range(steps):
        while len(order) < batch_size:
            order.extend(torch.randperm(n, generator=generator).tolist())
        yield order[:batch_size]
        del order[:batch_size]


def collate(rows: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad token rows; labels are the ids with -100 on padding (ignored by the loss)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    labels = ids.masked_fill(mask == 0, -100)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def train(
    model: Any,
    examples: list[list[int]],
    pad_id: int,
    settings: LoopSettings,
    on_step: Callable[[dict[str, float]], None] | None = None,
    progress: bool = True,
) -> list[dict[str, float]]:
    """Train the parameters of ``model`` that require grad; return one log record per step.

    ``model(**batch)`` must return an object with ``.loss`` (any transformers causal LM does:
    it shifts labels itself and averages over non-ignored tokens).
    """
    from tqdm.auto import tqdm

    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise RuntimeError("no trainable parameters")  # a builder bug, not a user error
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    warmup_steps = max(1, math.ceil(settings.warmup * settings.steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, settings.steps, warmup_steps)
    )
    device = next(model.parameters()).device
    model.train()
    log: list[dict[str, float]] = []
    start = time.perf_counter()
    bar = tqdm(total=settings.steps, desc="training organism", unit="step",
               disable=not progress or None)
    try:
        batches = batch_indices(len(examples), settings.batch_size, settings.steps, settings.seed)
        for step, idx in enumerate(batches, start=1):
            rows = [examples[i] for i in idx]
            batch = {k: v.to(device) for k, v in collate(rows, pad_id).items()}
            lr = scheduler.get_last_lr()[0]
            loss = model(**batch, use_cache=False).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            record = {"step": step, "loss": float(loss.detach()), "lr": lr,
                      "tokens": int(batch["attention_mask"].sum()),
                      "elapsed": round(time.perf_counter() - start, 3)}
            log.append(record)
            if on_step is not None:
                on_step(record)
            bar.update(1)
            bar.set_postfix(loss=f"{record['loss']:.3f}")
    finally:
        bar.close()
        model.eval()
    return log
