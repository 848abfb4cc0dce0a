"""Logit-diff amplification: sample from ``softmax(z_ft + α (z_ft − z_base))``.

Aranguri & McGrath (Goodfire, 2025): a finetune's rare behaviours become frequent when the
difference of its next-token logits from the base model's is amplified.  Both models decode the
same tokens step by step, each with its own KV cache, and every step samples from

    z_α = z_ft + α (z_ft − z_base)  =  (1 + α) z_ft − α z_base

written in the second form on purpose: ``α = 0`` gives ``z_ft`` and ``α = −1`` gives ``z_base``
bit for bit (``1·z + 0·z'`` is exact in floating point), so those two strengths reproduce plain
finetuned and plain base sampling token for token (tested against :func:`generate`).

* **One weight copy for a LoRA pair.**  ``pair.use(side)`` toggles the adapter around each
  side's forward; the base and finetuned caches are two separate cache objects, so the toggle
  never mixes their keys and values.
* **Per-row strengths.**  α is a ``(B, 1)`` tensor: rows with different strengths share a batch.
* **Per-row random streams** exactly as :mod:`difflens.models.generation`: row ``i`` draws one
  uniform per step from ``row_seed(seed, keys[i])``, so a row's sample depends neither on its
  batch nor on the other rows' strengths; giving one prompt the same key at every α gives common
  random numbers across strengths.
* Temperature, top-k and top-p apply to the amplified logits (:func:`sample_tokens`).
* **Streaming**: ``on_token(rows, tokens)`` (default None) is called at every step exactly as
  in :mod:`difflens.models.generation` (rows past their end token get the pad id).
* Sampling runs over the shared vocabulary (the leading ids both heads score); when the two
  heads differ in size, the extra rows of the larger one are never sampled (``note``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from difflens.data.padding import left_padded, pad_id
from difflens.errors import DifflensError
from difflens.models.generation import (
    Generations,
    SamplingConfig,
    TokenCallback,
    cache_keyword,
    choose_tokens,
    contiguous_head_input,
    cut_at_end,
    end_token_ids,
    new_cache,
    row_uniforms,
)
from difflens.models.pair import BASE, FT

if TYPE_CHECKING:
    from difflens.models.pair import ModelPair

#: Accepted strengths.  −1 is the base model and 0 the finetune; past 100 the difference swamps
#: the logits entirely (sampling becomes the argmax of z_ft − z_base, i.e. noise tokens).
ALPHA_MIN, ALPHA_MAX = -1.0, 100.0


@dataclass
class AmplifiedGenerations(Generations):
    """:class:`Generations` plus the strength of every row and the vocabulary sampled."""

    alphas: list[float] | None = None
    vocab: int = 0
    note: str | None = None  # set when the two heads score different numbers of tokens


def check_alpha(alpha: Any) -> float:
    """``alpha`` as a float, or one line saying it must be finite and in [−1, 100]."""
    try:
        value = float(alpha)
    except (TypeError, ValueError):
        raise DifflensError(f"amplification strength α must be a number, got {alpha!r} "
                            "(e.g. --alphas 0 1 2 4)") from None
    if not math.isfinite(value) or not ALPHA_MIN <= value <= ALPHA_MAX:
        raise DifflensError(
            f"amplification strength α must be finite and in [{ALPHA_MIN:g}, {ALPHA_MAX:g}] "
            f"(−1 = base model, 0 = finetune), got {alpha!r} (e.g. --alphas 0 1 2 4)")
    return value


def amplify_logits(z_ft: torch.Tensor, z_base: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """``(1 + α) z_ft − α z_base``.

    Args:
        z_ft, z_base: ``(B, V)`` float32 next-token logits over the shared vocabulary.
        alpha: ``(B, 1)`` float32 strengths, one per row.
    Returns:
        ``(B, V)`` float32 amplified logits (exactly ``z_ft`` at α = 0, ``z_base`` at α = −1).
    """
    return z_ft.mul(1.0 + alpha).sub_(z_base * alpha)


def amplified_rows(prompts: Sequence[str], alphas: Sequence[float], samples_per_prompt: int = 1
                   ) -> tuple[list[str], list[float], list[int]]:
    """Every prompt × strength × sample as rows: ``(prompts, alphas, keys)``.

    Row key = ``prompt index × samples_per_prompt + sample``: the same at every strength, so the
    strengths of one prompt share their random stream (common random numbers).
    """
    rows: tuple[list[str], list[float], list[int]] = ([], [], [])
    for alpha in alphas:
        for i, prompt in enumerate(prompts):
            for s in range(samples_per_prompt):
                rows[0].append(prompt)
                rows[1].append(float(alpha))
                rows[2].append(i * samples_per_prompt + s)
    return rows


def shared_vocab_note(pair: ModelPair) -> tuple[int, str | None]:
    """The shared vocabulary size and, when the heads or the tokenizer differ in size, the
    engine's note saying so (:mod:`difflens.models.vocab`)."""
    from difflens.models.vocab import shared_vocab, vocab_note

    return shared_vocab(pair), vocab_note(pair)


def _side_logits(pair: ModelPair, side: str, cache: Any, ids: torch.Tensor, mask: torch.Tensor,
                 positions: torch.Tensor, vocab: int) -> torch.Tensor:
    """One forward of one side over ``ids`` ``(B, t)`` appending to its ``cache``; returns the
    last position's logits ``(B, V)`` float32 (a copy, as ``generate`` takes)."""
    with pair.use(side) as (model, arch), ExitStack() as stack:
        stack.enter_context(contiguous_head_input(arch))
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions,
                    use_cache=True, logits_to_keep=1, **{cache_keyword(model): cache})
        return out.logits[:, -1, :vocab].to(dtype=torch.float32, copy=True)


@torch.inference_mode()
def _amplify_chunk(pair: ModelPair, prompts: Sequence[str], alphas: Sequence[float],
                   keys: Sequence[int], sampling: SamplingConfig, ends: list[int], vocab: int,
                   on_token: TokenCallback | None = None, rows: Sequence[int] = ()
                   ) -> tuple[list[str], list[int], int]:
    tok = pair.tokenizer
    device = pair.device
    ids, mask = left_padded(tok, prompts)
    ids, mask = ids.to(device), mask.to(device)
    # Position ids as generate derives them for left padding (pads get 0, masked anyway).
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
    alpha = torch.tensor([float(a) for a in alphas], dtype=torch.float32, device=device)[:, None]
    # One draw per row per step, finished rows included, taken up front (as generate does).
    uniform = (row_uniforms(sampling.seed, keys, sampling.max_new_tokens).to(device)
               if sampling.do_sample else None)
    with pair.use(FT) as (model, _):
        caches = {FT: new_cache(model), BASE: new_cache(model)}
    end_ids = torch.tensor(ends, dtype=torch.long, device=device)
    pad = pad_id(tok)
    running = torch.ones(len(prompts), dtype=torch.bool, device=device)
    new: list[torch.Tensor] = []
    step_ids = ids
    for t in range(sampling.max_new_tokens):
        z_ft = _side_logits(pair, FT, caches[FT], step_ids, mask, positions, vocab)
        z_base = _side_logits(pair, BASE, caches[BASE], step_ids, mask, positions, vocab)
        logits = amplify_logits(z_ft, z_base.to(z_ft.device), alpha)
        del z_ft, z_base
        chosen = choose_tokens(logits, sampling, None if uniform is None else uniform[:, t])
        chosen = torch.where(running, chosen.to(device), torch.full_like(chosen, pad))
        new.append(chosen)
        if on_token is not None:
            on_token(list(rows), chosen.tolist())
        running &= ~torch.isin(chosen, end_ids)
        if not bool(running.any()):
            break
        step_ids = chosen[:, None]
        mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=-1)
        positions = positions[:, -1:] + 1
    out = torch.stack(new, dim=1).cpu() if new else torch.zeros((len(prompts), 0), dtype=torch.long)
    texts, counts = cut_at_end(tok, out, ends)
    return texts, counts, out.shape[1]


def generate_amplified(
    pair: ModelPair,
    prompts: Sequence[str],
    alphas: float | Sequence[float],
    sampling: SamplingConfig,
    keys: Sequence[int] | None = None,
    batch_size: int = 32,
    progress: bool = False,
    on_token: TokenCallback | None = None,
) -> AmplifiedGenerations:
    """Continue every prompt sampling from the amplified logits ``z_ft + α (z_ft − z_base)``.

    Args:
        pair: base and finetuned models (one weight copy for a PEFT pair).
        prompts: fully rendered prompts (:func:`difflens.data.chat.chat_prompt` for chat).
        alphas: one strength for all rows, or one per row (finite, in [−1, 100]).
        sampling: as :func:`difflens.models.generation.generate` (temperature, top-k, top-p
            act on the amplified logits).
        keys: one random-stream key per row (default: the row index); see :func:`amplified_rows`.
        batch_size: rows per decode loop (memory cap: results do not depend on it).
        on_token: streaming hook ``(rows, tokens)`` per step (module docstring); None changes
            nothing.
    Returns:
        :class:`AmplifiedGenerations` in prompt order; ``steps`` / ``token_slots`` count
        decoding steps of the loop (each step runs both models).
    """
    n = len(prompts)
    per_row = [alphas] * n if isinstance(alphas, int | float) else list(alphas)
    keys = list(keys) if keys is not None else list(range(n))
    if len(per_row) != n or len(keys) != n:
        raise ValueError(f"{n} prompts but {len(per_row)} strengths and {len(keys)} keys")
    per_row = [check_alpha(a) for a in per_row]
    vocab, note = shared_vocab_note(pair)
    from tqdm.auto import tqdm

    texts: list[str] = []
    counts: list[int] = []
    steps = slots = 0
    start = time.perf_counter()
    with pair.use(FT) as (model, _):
        ends = end_token_ids(pair.tokenizer, model)
    for lo in tqdm(range(0, n, batch_size), desc="amplified generation", unit="batch",
                   disable=not progress or None):
        hi = min(n, lo + batch_size)
        t, c, s = _amplify_chunk(pair, prompts[lo:hi], per_row[lo:hi], keys[lo:hi], sampling,
                                 ends, vocab, on_token, range(lo, hi))
        texts += t
        counts += c
        steps += s
        slots += s * (hi - lo)
    return AmplifiedGenerations(texts, counts, steps, slots, time.perf_counter() - start,
                                alphas=per_row, vocab=vocab, note=note)
