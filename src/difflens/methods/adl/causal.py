"""ADL's causal test: projection replacement along δ̄ and its effect on next-token cross-entropy.

In the finetuned model, at the readout layer, the component of the residual along v̂ = δ̄/‖δ̄‖
is replaced by the base model's component on the same tokens:

    x -> x + ((x_base·v̂) − (x·v̂)) v̂

ΔCE = CE(intervened ft) − CE(ft).  If δ̄ carries the finetune's bias, removing it hurts the
finetune's own documents (ΔCE > 0) and helps general text (ΔCE < 0).  The same replacement along
random directions gives the range expected by chance.

Cost model (why the loop looks the way it does): per batch of texts, the base model runs once
(capturing ``x_base`` at the layer and its own CE), the un-intervened finetune runs once, and then
one finetuned pass per direction.  All projection targets ``x_base·u`` come from one matrix
product; several directions can share one forward by stacking copies of the batch
(``batch_size`` counts rows per forward).  Cross-entropy is computed from the hidden state entering
the final norm, unembedded in chunks over valid positions only, so ``B×T×V`` logits never exist.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING, Any

import torch

from difflens.collect import layer_activations
from difflens.data.padding import pad_id, pad_rows
from difflens.data.tokenize import encode
from difflens.errors import DifflensError
from difflens.models.device import is_gpu
from difflens.models.hooks import (
    StopForward,
    capture,
    record_outputs,
    replay_outputs,
    run_forward,
)
from difflens.models.nll import token_ce
from difflens.models.pair import BASE, FT

if TYPE_CHECKING:
    from difflens.models.arch import Architecture
    from difflens.models.pair import ModelPair

# Defaults.  Each batch of texts costs 3 + 2·n_random forward passes *with* the LM head (base,
# ft, δ̄, baselines); each pass costs about one bare forward (measured on gemma-3-270m: 15 passes
# = 15.8 bare forwards of the same batch).  At ~270 tokens/s with a 262k-vocab head on 2 CPU
# cores, 32 texts × 64 tokens × 35 passes × 2 datasets ≈ 143k tokens ≈ 9 min; 64 texts would be
# ~18 min, hence 32 on CPU.  The ΔCEs are paired comparisons on the same ~2k predicted tokens, so
# chance variation between directions is small next to a real δ̄ effect.  On a GPU the passes are
# cheap: 256 texts.
DEFAULT_N_TEXTS_CPU = 32
DEFAULT_N_TEXTS_GPU = 256
DEFAULT_MAX_TOKENS = 64
DEFAULT_N_RANDOM = 16
DEFAULT_BATCH_SIZE = 16

RANDOM = "random_direction"
BASE_DIFF = "base_activation_difference"
BASELINE_DEFINITIONS = {
    RANDOM: "u = g/‖g‖ with g ~ N(0, I_d), drawn from torch.Generator seeded with `seed`",
    BASE_DIFF: (
        "u = (a_i − a_j)/‖a_i − a_j‖ where a_i, a_j are the base model's residual activations "
        "at the readout layer at two distinct token positions drawn uniformly without "
        "replacement (same generator, after the random directions) from the first batch of the "
        "reference texts, positions ≥ 1 only (BOS excluded: its atypical norm would dominate)"
    ),
}


# --------------------------------------------------------------------------- directions


def random_directions(n: int, d: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` Gaussian directions, unit norm: ``(n, d)`` float32."""
    g = torch.randn(n, d, generator=generator)
    return g / g.norm(dim=-1, keepdim=True)


def base_difference_directions(
    acts: torch.Tensor, n: int, generator: torch.Generator
) -> torch.Tensor:
    """``n`` normalised differences of pairs of distinct rows of ``acts``.

    Args:
        acts: ``(P, d)`` base activations at the readout layer (a pool of token positions).
    Returns:
        ``(n, d)`` float32 unit rows; pair m uses rows ``perm[2m]`` and ``perm[2m+1]``.
    """
    if acts.shape[0] < 2 * n:
        raise DifflensError(
            f"the causal test needs {2 * n} reference token positions to draw {n} "
            f"base-activation differences but found {acts.shape[0]}; give longer reference "
            "texts or fewer random baselines"
        )
    pick = torch.randperm(acts.shape[0], generator=generator)[: 2 * n]
    diff = acts[pick[0::2].to(acts.device)] - acts[pick[1::2].to(acts.device)]
    return (diff / diff.norm(dim=-1, keepdim=True).clamp_min(1e-12)).float().cpu()


# --------------------------------------------------------------------------- tokens


def token_batch(tokenizer: Any, texts: list[str], max_tokens: int) -> tuple[Any, Any]:
    """Tokenise (BOS first), truncate to ``max_tokens``, sort by length, right-pad.

    Texts with fewer than 2 tokens (nothing to predict) are dropped.  Sorting by length keeps
    padding low within each batch; CE sums do not depend on the order.

    Returns:
        ``(tokens (N, T) long, mask (N, T) long)`` with T = the longest kept text.
    """
    if max_tokens < 2:
        raise DifflensError(f"max_tokens must be at least 2, got {max_tokens}")
    rows = [ids[:max_tokens] for ids in (encode(tokenizer, t) for t in texts)]
    rows = sorted((r for r in rows if len(r) >= 2), key=len, reverse=True)
    if not rows:
        raise DifflensError("no text has two tokens or more; the causal test needs real text")
    return pad_rows(rows, pad_id(tokenizer))


# --------------------------------------------------------------------------- hooks and CE


@contextmanager
def replace_projections(
    arch: Architecture, layer: int, directions: torch.Tensor, targets: torch.Tensor
) -> Iterator[None]:
    """Projection replacement with one direction per stacked copy of the batch.

    The forward runs on ``G`` copies of a ``(B, T)`` batch stacked as ``(G·B, T)`` (copy-major);
    copy g gets x -> x + (targets[g] − x·u_g) u_g.  With G = 1 this is
    :func:`difflens.models.hooks.replace_projection`.

    Args:
        directions: ``(G, d)`` unit vectors.
        targets: ``(G, B, T)`` projections to write (the base model's ``x_base·u_g``).
    """
    index = arch.resolve_layer(layer)
    groups = directions.shape[0]

    def hook(_module: Any, _inputs: Any, output: Any) -> Any:
        hidden = output[0] if isinstance(output, tuple) else output
        rows, length, d = hidden.shape
        h = hidden.view(groups, rows // groups, length, d)
        u = directions.to(hidden.device, hidden.dtype)
        current = torch.einsum("gbtd,gd->gbt", h, u)
        shift = (targets.to(hidden.device, hidden.dtype) - current)[..., None] * u[:, None, None]
        edited = (h + shift).view(rows, length, d)
        return (edited, *output[1:]) if isinstance(output, tuple) else edited

    handle = arch.layers[index].register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def _final_hidden(arch: Architecture) -> Iterator[dict[str, torch.Tensor]]:
    """Store the hidden state entering the final norm and end the forward there (no LM head)."""
    store: dict[str, torch.Tensor] = {}

    def pre_hook(_module: Any, inputs: Any) -> None:
        store["hidden"] = inputs[0]
        raise StopForward

    handle = arch.final_norm.register_forward_pre_hook(pre_hook)
    try:
        yield store
    finally:
        handle.remove()


def forward_ce(
    pair: ModelPair,
    side: str,
    tokens: torch.Tensor,
    mask: torch.Tensor,
    read_layer: int | None = None,
    edit: tuple[int, torch.Tensor, torch.Tensor] | None = None,
    record: list[Any] | None = None,
    replay: list[Any] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One forward of ``side``: per-row CE sums ``(R,)`` and, if asked, the float32 residual
    ``(R, T, d)`` at ``read_layer``.

    ``edit = (layer, directions, targets)`` applies :func:`replace_projections`.  ``record``: a
    list of ``n`` Nones, filled with the raw outputs of layers ``0..n−1``; ``replay``: such a
    list from an earlier pass on the same tokens, whose layers are then skipped (the stacked
    copies of an ``edit`` are tiled from it).
    """
    device = pair.device
    with pair.use(side) as (model, arch), torch.inference_mode():
        with ExitStack() as stack:
            store = None
            if read_layer is not None:
                store = stack.enter_context(capture(arch, [read_layer], stop_early=False))
            if record is not None:
                recorded = stack.enter_context(record_outputs(arch, len(record) - 1))
            if replay is not None:
                copies = edit[1].shape[0] if edit is not None else 1
                stack.enter_context(replay_outputs(arch, replay, copies))
            if edit is not None:
                stack.enter_context(replace_projections(arch, *edit))
            final = stack.enter_context(_final_hidden(arch))
            run_forward(model, input_ids=tokens.to(device), attention_mask=mask.to(device))
        # Hooks removed (the final-norm one would stop arch.logits); the adapter stays as set.
        ce = token_ce(arch, final["hidden"], tokens, mask).cpu()
    if record is not None:
        record[:] = recorded
    read = store[arch.resolve_layer(read_layer)].float() if store is not None else None
    return ce, read


# --------------------------------------------------------------------------- the test


def _dataset_delta_ce(
    pair: ModelPair,
    layer: int,
    directions: torch.Tensor,
    tokens: torch.Tensor,
    mask: torch.Tensor,
    batch_size: int,
    progress: bool,
    desc: str,
) -> dict[str, Any]:
    """Mean CE of base, ft and ft intervened along each of ``directions`` ``(M, d)``.

    Returns ``{"n_texts", "n_tokens", "ce_base", "ce_ft", "ce_intervened": [M floats]}``.
    """
    from tqdm.auto import tqdm

    n = tokens.shape[0]
    per_chunk = min(batch_size, n)
    groups = max(1, batch_size // per_chunk)  # directions stacked per forward
    dirs = directions.to(pair.device)
    sums = torch.zeros(directions.shape[0], dtype=torch.float64)
    base_sum = ft_sum = 0.0
    bar = tqdm(total=n, desc=desc, unit="text", disable=not progress or None)
    try:
        for start in range(0, n, per_chunk):
            tok, msk = tokens[start : start + per_chunk], mask[start : start + per_chunk]
            width = int(msk.sum(1).max())  # sorted by length: trim this chunk's padding
            tok, msk = tok[:, :width], msk[:, :width]
            base_ce, x_base = forward_ce(pair, BASE, tok, msk, read_layer=layer)
            targets = torch.einsum("btd,md->mbt", x_base, dirs)  # all directions at once
            base_sum += float(base_ce.sum())
            # Every edited pass equals the plain finetuned one up to the edited layer: record
            # layers 0..layer once and replay them (on gemma-3-270m at 0.75 depth this skips
            # 14 of 18 layers per direction; the LM head stays the main cost).
            prefix: list[Any] = [None] * (layer + 1)
            ft_sum += float(forward_ce(pair, FT, tok, msk, record=prefix)[0].sum())
            for g in range(0, dirs.shape[0], groups):
                u, tg = dirs[g : g + groups], targets[g : g + groups]
                reps = u.shape[0]
                ce, _ = forward_ce(pair, FT, tok.repeat(reps, 1), msk.repeat(reps, 1),
                                   edit=(layer, u, tg), replay=prefix)
                sums[g : g + reps] += ce.view(reps, -1).sum(1)
            bar.update(tok.shape[0])
    finally:
        bar.close()
    count = int(mask[:, 1:].sum())
    return {
        "n_texts": n,
        "n_tokens": count,
        "ce_base": base_sum / count,
        "ce_ft": ft_sum / count,
        "ce_intervened": (sums / count).tolist(),
    }


def _summarise(raw: dict[str, Any], n_random: int, expect_positive: bool) -> dict[str, Any]:
    ce_ft = raw["ce_ft"]
    deltas = [ce - ce_ft for ce in raw["ce_intervened"]]
    delta, random_d, diff_d = deltas[0], deltas[1 : 1 + n_random], deltas[1 + n_random :]
    baselines = {kind: {"delta_ce": vals, "min": min(vals), "max": max(vals),
                        "mean": sum(vals) / len(vals)}
                 for kind, vals in ((RANDOM, random_d), (BASE_DIFF, diff_d))}
    others = random_d + diff_d
    outside = delta > max(others) if expect_positive else delta < min(others)
    return {
        "n_texts": raw["n_texts"],
        "n_tokens": raw["n_tokens"],
        "ce_base": raw["ce_base"],
        "ce_ft": ce_ft,
        "ce_intervened": raw["ce_intervened"][0],
        "delta_ce": delta,
        "baselines": baselines,
        "expected_sign": "positive" if expect_positive else "negative",
        "sign_as_expected": delta > 0 if expect_positive else delta < 0,
        "outside_random_range": bool(outside),
    }


def _subsample(texts: list[str], n: int, generator: torch.Generator) -> list[str]:
    """Up to ``n`` texts, a seeded sample without replacement (original order kept)."""
    if len(texts) <= n:
        return list(texts)
    keep = sorted(torch.randperm(len(texts), generator=generator)[:n].tolist())
    return [texts[i] for i in keep]


def causal_stage(
    pair: ModelPair,
    vector: torch.Tensor,
    layer: int,
    ft_texts: list[str],
    ref_texts: list[str],
    n_random: int = DEFAULT_N_RANDOM,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    n_texts: int | None = None,
    seed: int = 0,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = False,
) -> dict[str, Any]:
    """Projection-replacement causal test of ``vector`` (δ̄, ``(d,)``) at ``layer``.

    Args:
        ft_texts: finetune documents; ref_texts: general text (e.g. the shipped reference).
        n_random: baselines of *each* kind (random Gaussian directions, normalised differences
            of base activations; see ``BASELINE_DEFINITIONS``).
        max_tokens: tokens kept per text (BOS included).
        n_texts: texts used per dataset (a seeded sample when more are given); ``None`` = 32 on
            CPU, 256 on GPU (see ``DEFAULT_N_TEXTS_*``).
        batch_size: sequences per forward; when larger than the texts available, several
            directions share one forward (copies of the batch).
    Returns:
        JSON-able ``{"layer", "direction_norm", "n_random", "max_tokens", "max_texts", "seed",
        "baseline_definitions", "finetune": {...}, "reference": {...}, "all_expected"}``;
        each dataset entry holds ``n_texts, n_tokens, ce_base, ce_ft, ce_intervened, delta_ce,
        baselines: {kind: {delta_ce: [...], min, max, mean}}, expected_sign,
        sign_as_expected, outside_random_range``.
    """
    if n_random < 1:
        raise DifflensError(f"n_random must be at least 1, got {n_random}")
    if batch_size < 1:
        raise DifflensError(f"batch_size must be at least 1, got {batch_size}")
    if not ft_texts or not ref_texts:
        raise DifflensError(
            "the causal test needs finetune documents and reference texts; give both corpora"
        )
    arch = pair.arch(FT)
    layer = arch.resolve_layer(layer)
    vector = vector.detach().float().cpu().reshape(-1)
    if vector.shape[0] != arch.hidden_size:
        raise DifflensError(
            f"the direction has {vector.shape[0]} dimensions but the model's residual has "
            f"{arch.hidden_size}; pass δ̄ of this pair"
        )
    norm = float(vector.norm())
    if not norm > 0:  # also catches NaN
        raise DifflensError(
            f"δ̄ at layer {layer} is zero or not finite: the models do not differ there; "
            "there is nothing to test"
        )
    if n_texts is None:
        n_texts = DEFAULT_N_TEXTS_GPU if is_gpu(pair.device) else DEFAULT_N_TEXTS_CPU
    if n_texts < 1:
        raise DifflensError(f"n_texts must be at least 1, got {n_texts}")
    gen = torch.Generator().manual_seed(seed)
    ft_tok = token_batch(pair.tokenizer, _subsample(ft_texts, n_texts, gen), max_tokens)
    ref_tok = token_batch(pair.tokenizer, _subsample(ref_texts, n_texts, gen), max_tokens)

    randoms = random_directions(n_random, arch.hidden_size, gen)
    # Pool for base differences: one early-stopped base pass over the first reference batch.
    pool_tok, pool_mask = (t[: min(batch_size, t.shape[0])] for t in ref_tok)
    acts = layer_activations(pair, BASE, pool_tok, [layer], pool_mask)[layer]
    pool = acts[:, 1:][pool_mask[:, 1:].bool().to(acts.device)]
    diffs = base_difference_directions(pool, n_random, gen)
    directions = torch.cat([(vector / norm)[None], randoms, diffs])  # (1 + 2n, d)

    result: dict[str, Any] = {
        "layer": layer,
        "direction_norm": norm,
        "n_random": n_random,
        "max_tokens": max_tokens,
        "max_texts": n_texts,
        "seed": seed,
        "baseline_definitions": dict(BASELINE_DEFINITIONS),
    }
    for name, (tok, msk), positive in (("finetune", ft_tok, True),
                                       ("reference", ref_tok, False)):
        raw = _dataset_delta_ce(pair, layer, directions, tok, msk, batch_size, progress,
                                desc=f"causal test ({name})")
        result[name] = _summarise(raw, n_random, positive)
    result["all_expected"] = all(
        result[name]["sign_as_expected"] and result[name]["outside_random_range"]
        for name in ("finetune", "reference")
    )
    return result
