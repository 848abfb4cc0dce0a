"""Paired activation streaming: base and finetuned activations over a corpus, batch by batch.

Each batch runs the base pass then the finetuned pass over the same ``(B, k)`` token window,
stopping each forward right after the deepest requested layer (no LM head).  Consumers fold the
batches into streaming accumulators (:mod:`difflens.stats`), so memory is O(B·k·d), never N·k·d.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import torch

from difflens.data.tokenize import check_k, first_k_batches, first_k_tokens
from difflens.errors import DifflensError
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
    tokens: torch.Tensor | Iterable[torch.Tensor],
    layers: list[int],
    batch_size: int = 64,
    progress: bool = True,
    desc: str = "collecting activations",
    total: int | None = None,
) -> Iterator[PairedBatch]:
    """Stream base and finetuned activations of ``tokens``: an ``(N, T)`` tensor (no padding),
    cut into batches of ``batch_size`` rows, or an iterable of ``(B, T)`` batches (e.g.
    :func:`~difflens.data.tokenize.first_k_batches`, tokenising ahead in a thread), with
    ``total`` rows for the progress bar."""
    from tqdm.auto import tqdm

    if isinstance(tokens, torch.Tensor):
        total = tokens.shape[0]
        tensor = tokens
        batches: Iterable[torch.Tensor] = (tensor[start: start + batch_size]
                                           for start in range(0, tensor.shape[0], batch_size))
    else:
        batches = tokens
    bar = tqdm(total=total, desc=desc, unit="text", disable=not progress or None)
    try:
        for batch in batches:
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
    # Under torchrun each rank tokenises and streams its contiguous share of the texts; the
    # moments are then merged in rank order (= corpus order), so every rank holds the whole's.
    # The tokenizer runs a chunk ahead in a thread, hidden behind the forward passes.
    mine = dd.shard(texts)
    batches = first_k_batches(pair.tokenizer, mine, k, batch_size)
    stats = DiffMoments(resolved, k, pair.arch(FT).hidden_size)

    def local() -> None:
        for i, batch in enumerate(paired_activations(pair, batches, resolved, batch_size,
                                                     progress and dd.is_main(), total=len(mine))):
            for layer in resolved:
                stats.update(layer, batch.base[layer], batch.ft[layer])
            if i == 0:
                dd.fault_point()
        stats.to("cpu")  # summed on the model's device; merged and saved on the host

    dd.run_shard("activation collection", local)
    whole = dd.merged(stats)
    if whole.count == 0:
        raise DifflensError(f"every text of the corpus is shorter than {k} tokens; use longer "
                            "texts or a smaller k")
    return whole


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
        for per in moments.values():
            for m in per.values():
                m.to("cpu")

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


class ReadoutPass(NamedTuple):
    """What :func:`readout_pass` measured: the layer choice and the statistics behind it."""

    choice: Any  # difflens.stats.layer_choice.LayerChoice
    stats: DiffMoments  # every layer's δ moments over the first k tokens
    norms: dict[str, dict[int, float]]  # side -> layer -> ν (mean ‖h‖, positions 5..31)


def readout_pass(pair: ModelPair, texts: list[str], k: int = 5, batch_size: int = 64,
                 progress: bool = True) -> ReadoutPass:
    """The readout layer by ADL's rule (:func:`difflens.stats.layer_choice.choose_layer`), from
    a short pass over the first ``k`` tokens of ``texts`` reading every layer, with that pass's
    statistics (so a caller that also needs δ̄ or ν at the chosen layer does not run it again).

    The rule's only input is ‖δ̄_ℓ‖/ν^ft_ℓ per layer, δ̄ averaged over positions 1..k-1 (BOS
    kept apart), ν^ft from :func:`collect_norms`.
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
    return ReadoutPass(choose_layer(rel, pair.num_layers), stats, norms)


def choose_readout_layer(pair: ModelPair, texts: list[str], k: int = 5, batch_size: int = 64,
                         progress: bool = True) -> Any:
    """For methods that need "the layer ADL would read" without an ADL run (KL norms, PCA):
    :func:`readout_pass`'s :class:`~difflens.stats.layer_choice.LayerChoice`."""
    return readout_pass(pair, texts, k, batch_size, progress).choice
