"""Paired activation streaming: base and finetuned activations over a corpus, batch by batch.

Each batch runs the base pass then the finetuned pass over the same ``(B, k)`` token window,
stopping each forward right after the deepest requested layer (no LM head).  Consumers fold the
batches into streaming accumulators (:mod:`difflens.stats`), so memory is O(B·k·d), never N·k·d.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from difflens.data.tokenize import check_k, first_k_tokens
from difflens.models.hooks import capture, run_forward
from difflens.models.pair import BASE, FT
from difflens.stats import DiffMoments, Moments

if TYPE_CHECKING:
    from difflens.models.pair import ModelPair


@dataclass
class PairedBatch:
    """One batch of paired activations.

    ``tokens``: ``(B, T)``; ``base[layer]``, ``ft[layer]``: ``(B, T, d)`` float32 on the model's
    device.
    """

    tokens: torch.Tensor
    base: dict[int, torch.Tensor]
    ft: dict[int, torch.Tensor]


def layer_activations(
    pair: ModelPair, side: str, tokens: torch.Tensor, layers: list[int],
    attention_mask: torch.Tensor | None = None,
) -> dict[int, torch.Tensor]:
    """Residual outputs of ``layers`` for one side: ``layer -> (B, T, d)``, float32."""
    with pair.use(side) as (model, arch), capture(arch, layers) as store, torch.inference_mode():
        inputs = {"input_ids": tokens.to(pair.device)}
        if attention_mask is not None:
            inputs["attention_mask"] = attention_mask.to(pair.device)
        run_forward(model, **inputs)
    return {layer: act.float() for layer, act in store.items()}


def paired_activations(
    pair: ModelPair,
    tokens: torch.Tensor,
    layers: list[int],
    batch_size: int = 64,
    progress: bool = True,
    desc: str = "collecting activations",
) -> Iterator[PairedBatch]:
    """Stream base and finetuned activations of ``tokens`` (``(N, T)``, no padding)."""
    from tqdm.auto import tqdm

    bar = tqdm(total=tokens.shape[0], desc=desc, unit="text", disable=not progress or None)
    try:
        for start in range(0, tokens.shape[0], batch_size):
            batch = tokens[start : start + batch_size]
            base = layer_activations(pair, BASE, batch, layers)
            ft = layer_activations(pair, FT, batch, layers)
            bar.update(batch.shape[0])
            yield PairedBatch(batch, base, ft)
    finally:
        bar.close()


def collect_mean_diff(
    pair: ModelPair,
    texts: list[str],
    layers: list[int | float],
    k: int = 5,
    batch_size: int = 256,
    progress: bool = True,
) -> DiffMoments:
    """Per-layer, per-position moments of h_ft − h_base over the first ``k`` tokens of texts.

    Returns a :class:`DiffMoments` whose ``mean_diff(layer)`` is δ̄ of shape ``(k, d)``.
    """
    from difflens import distributed as dd

    check_k(k)
    resolved = pair.resolve_layers(layers)
    # Under torchrun every rank tokenises the same corpus and streams its contiguous share of
    # the rows; the moments are then merged in rank order, so every rank holds the whole's.
    tokens = dd.shard(first_k_tokens(pair.tokenizer, texts, k))
    stats = DiffMoments(resolved, k, pair.arch(FT).hidden_size)

    def local() -> None:
        for i, batch in enumerate(paired_activations(pair, tokens, resolved, batch_size,
                                                     progress and dd.is_main())):
            for layer in resolved:
                stats.update(layer, batch.base[layer], batch.ft[layer])
            if i == 0:
                dd.fault_point()

    dd.run_shard("activation collection", local)
    return dd.merged(stats)


def collect_norms(
    pair: ModelPair,
    texts: list[str],
    layers: list[int | float],
    start: int = 5,
    length: int = 32,
    max_texts: int = 64,
    batch_size: int = 32,
    progress: bool = True,
) -> dict[str, dict[int, float]]:
    """Mean activation norm ν per side and layer over positions ``start..length-1``.

    Positions < ``start`` are skipped because BOS and the first tokens have atypical norms; the
    result calibrates steering strengths (``side -> layer -> ν``).
    """
    from difflens import distributed as dd

    resolved = pair.resolve_layers(layers)
    # The window is decided on the whole text list (identically on every rank), then each rank
    # reads its share of the rows: the merged means are the single-process ones.
    tokens = _norm_window(pair.tokenizer, texts[: max_texts * 2], start, length)[:max_texts]
    start = min(start, tokens.shape[1] - 1)
    tokens = dd.shard(tokens)
    moments = {side: {layer: Moments(()) for layer in resolved} for side in (BASE, FT)}

    def local() -> None:
        for batch in paired_activations(pair, tokens, resolved, batch_size,
                                        progress and dd.is_main(), desc="activation norms"):
            for layer in resolved:
                for side, acts in ((BASE, batch.base), (FT, batch.ft)):
                    moments[side][layer].update(acts[layer][:, start:].norm(dim=-1).reshape(-1))

    dd.run_shard("activation norms", local)
    parts = dd.gather_objects(moments) or [moments]
    whole = parts[0]
    for part in parts[1:]:  # rank order = corpus order
        for side, per in part.items():
            for layer, m in per.items():
                whole[side][layer].merge(m)
    return {side: {layer: float(m.mean) for layer, m in per.items()}
            for side, per in whole.items()}


def _norm_window(tokenizer: Any, texts: list[str], start: int, length: int) -> torch.Tensor:
    """First-``length`` windows; shorter windows (down to ``start + 1``, then 2) for corpora of
    short texts, so calibration degrades gracefully instead of failing."""
    from difflens.errors import DifflensError

    for size in sorted({length, 16, 8, start + 1, 2}, reverse=True):
        if size > length:
            continue
        try:
            tokens = first_k_tokens(tokenizer, texts, size)
        except DifflensError:
            continue
        if tokens.shape[0] >= min(16, len(texts)):
            return tokens
    return first_k_tokens(tokenizer, texts, 2)


def choose_readout_layer(pair: ModelPair, texts: list[str], k: int = 5, batch_size: int = 64,
                         progress: bool = True) -> Any:
    """The readout layer by ADL's rule (:func:`difflens.stats.layer_choice.choose_layer`), from
    a short pass over the first ``k`` tokens of ``texts`` reading every layer.

    For methods that need "the layer ADL would read" without an ADL run (KL norms, PCA): the
    rule's only input is ‖δ̄_ℓ‖/ν^ft_ℓ per layer, δ̄ averaged over positions 1..k-1 (BOS kept
    apart), ν^ft from :func:`collect_norms`.  Returns a
    :class:`~difflens.stats.layer_choice.LayerChoice`.
    """
    from difflens.stats.layer_choice import choose_layer

    layers = list(range(pair.num_layers))
    stats = collect_mean_diff(pair, texts, layers, k=k, batch_size=batch_size, progress=progress)
    norms = collect_norms(pair, texts, layers, progress=progress)
    rel = {}
    for layer in layers:
        delta = stats.mean_diff(layer)  # (k, d)
        avg = delta[1:].mean(0) if delta.shape[0] > 1 else delta[0]
        rel[layer] = float(avg.norm()) / max(norms[FT][layer], 1e-12)
    return choose_layer(rel, pair.num_layers)
