"""Batched generation from one side of a pair, with per-row steering and per-row sampling noise.

Two properties the steering search relies on:

* **Per-row steering.** Every row of a batch carries its own ``(vector, layer, alpha)``; rows
  that share a layer share one hook adding a ``(B, d)`` tensor (zero rows for unsteered ones), so
  many strengths and an unsteered baseline run in one ``generate`` call.
* **Per-row random streams.**  Each row samples with its own ``torch.Generator`` seeded from
  ``(seed, row key)``, one uniform draw per step (all of a call's draws are taken at its start,
  :func:`row_uniforms`, which gives the same numbers).  A row's continuation therefore does not
  depend on which other rows share its batch, nor on the batch size: a strength evaluated inside
  a large look-ahead batch gives the same samples as evaluated alone, so batched and sequential
  searches can make identical decisions.  Using the same key for a prompt at every strength
  also gives common random numbers across strengths, which makes their coherence comparable.
  (Exact up to float rounding: another batch shape or padding width can change logits by
  ~1e-6, which flips a draw only when it lands that close to a CDF boundary.)

**Decoding** is our own loop (:func:`decode`), not ``transformers``' ``generate``: the same
model calls (prefill with position ids from the left padding, then one token per step with a
growing mask, ``logits_to_keep=1``, logits copied to float32), the same token choice and the
same end rule (a row past its end token gets the pad id; the call stops when every row ended),
so the tokens are ``generate``'s (tested against plain greedy ``generate`` on every tiny
family), without its per-step logits-processor and stopping-criteria machinery.  On a CUDA
device, for families ``transformers`` can compile, the KV cache is static and every step after
the first is one CUDA-graph replay (:mod:`difflens.models.cuda_graphs`); if that path raises,
one warning is logged and the call (and every later one) decodes eagerly.

**Streaming.**  ``on_token`` (default None: nothing changes) is called once per decoding step
with the step's rows (indices into the call's prompts) and the token drawn for each, as soon as
it is drawn; rows past their end token are reported with the pad id (the caller cuts at the
first end token, as :class:`Generations` does).  An exception raised by it aborts the
generation (a live page uses that to stop work for a closed connection).  Streaming calls
always decode eagerly.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import torch

from difflens.data.padding import left_padded, pad_id
from difflens.models.hooks import add_vector
from difflens.models.pair import FT

if TYPE_CHECKING:
    from difflens.models.pair import ModelPair

log = logging.getLogger(__name__)

#: Row-key stride between a seed and the next: keys below it never collide across seeds.
_SEED_STRIDE = 1_000_003

#: ``on_token(rows, tokens)``: the rows of one decoding step and the token drawn for each.
TokenCallback = Callable[[list[int], list[int]], None]


@dataclass(frozen=True)
class SamplingConfig:
    """How continuations are drawn; recorded next to every set of samples."""

    max_new_tokens: int = 48  # new tokens per sample (rows stop early at an end-of-turn token)
    do_sample: bool = True  # False: greedy (argmax), the noise below is unused
    temperature: float = 0.7  # logits / T before top-k / top-p
    top_p: float = 0.9  # nucleus: smallest candidate set with this much probability
    top_k: int = 100  # candidates considered before top-p (0 = all: a full vocabulary sort)
    seed: int = 0  # base of every row's random stream

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> SamplingConfig:
        return dataclasses.replace(self, **changes)


class Steer(NamedTuple):
    """Steering of one row: ``alpha * vector`` added at ``layer`` at every position."""

    vector: torch.Tensor | None  # (d,); None = unsteered
    layer: int
    alpha: float


@dataclass
class Generations:
    """Continuations of one :func:`generate` call, in the order of its prompts."""

    texts: list[str]  # decoded new text only, cut at the first end token
    new_tokens: list[int]  # tokens generated per row (its end token included)
    steps: int  # decoding steps run, summed over chunks (each runs to its longest row)
    token_slots: int  # rows × steps summed over chunks: tokens the model actually computed
    seconds: float

    @property
    def total_new_tokens(self) -> int:
        return sum(self.new_tokens)


# -- pure core ----------------------------------------------------------------------------------
def sample_tokens(
    logits: torch.Tensor, uniform: torch.Tensor, temperature: float, top_p: float, top_k: int
) -> torch.Tensor:
    """Draw one token per row by inverse CDF over the top-k / top-p candidates.

    Args:
        logits: ``(B, V)`` next-token logits.
        uniform: ``(B,)`` draws in [0, 1), one per row (from that row's own stream).
    Returns:
        ``(B,)`` token ids.  The candidates' probabilities are taken from the softmax over the
        full vocabulary (at ``temperature``), so top-p means the same as without the top-k cap
        whenever the top-k tokens hold at least ``top_p`` of the mass.
    """
    inv_t = 1.0 / max(temperature, 1e-6)
    k = logits.shape[-1] if top_k <= 0 else min(top_k, logits.shape[-1])
    values, ids = logits.topk(k, dim=-1)  # sorted, largest first; 1/T > 0 keeps the order
    values = values.float()
    top = values[:, :1]
    probs = ((values - top) * inv_t).exp() / exp_sum(logits, top, inv_t)
    before = probs.cumsum(-1) - probs  # mass strictly ahead of each candidate
    probs = probs * (before < top_p)  # the top candidate is always kept
    cdf = probs.cumsum(-1)
    target = uniform.to(cdf.device, cdf.dtype)[:, None] * cdf[:, -1:]
    choice = (cdf <= target).sum(-1).clamp(max=k - 1)
    return ids.gather(1, choice[:, None]).squeeze(1)


#: Vocabulary columns per slice of :func:`exp_sum` on CPU (B × 16k floats stay in cache).
_VOCAB_SLICE = 16_384


def exp_sum(logits: torch.Tensor, top: torch.Tensor, inv_t: float) -> torch.Tensor:
    """``Σ_v exp((logits_v − top) · inv_t)`` per row: the softmax normaliser relative to ``top``.

    Args:
        logits: ``(B, V)``; top: ``(B, 1)``, each row's largest logit (so no term overflows).
    Returns:
        ``(B, 1)`` float32.  On CPU the vocabulary is walked in slices whose temporaries stay in
        cache: with a 262k-token vocabulary every full-size temporary is a pass over memory,
        and those passes cost as much per row as the model's own head.
    """
    if logits.device.type != "cpu":
        return ((logits.float() - top) * inv_t).exp().sum(-1, keepdim=True)
    total = torch.zeros_like(top, dtype=torch.float32)
    for lo in range(0, logits.shape[-1], _VOCAB_SLICE):
        part = logits[:, lo:lo + _VOCAB_SLICE].float()
        total += part.sub(top).mul_(inv_t).exp_().sum(-1, keepdim=True)
    return total


def row_seed(seed: int, key: int) -> int:
    """Seed of the random stream of the row with ``key`` under the run's ``seed``."""
    return seed * _SEED_STRIDE + key


def row_uniforms(seed: int, keys: Sequence[int], steps: int) -> torch.Tensor:
    """The first ``steps`` draws of every row's stream, drawn once per call instead of per step.

    Returns:
        ``(B, steps)`` float32; column ``t`` is what drawing one uniform per step from each
        row's ``torch.Generator`` gives at step ``t``: the CPU uniform kernel consumes its
        generator serially, so ``n`` draws at once equal ``n`` single draws (tested).  One call
        per row per generation instead of one per row per step, and on a GPU one copy.
    """
    if steps <= 0:
        return torch.zeros(len(keys), 0)
    return torch.stack([torch.rand(steps, generator=torch.Generator().manual_seed(
        row_seed(seed, key))) for key in keys]) if keys else torch.zeros(0, steps)


def choose_tokens(logits: torch.Tensor, sampling: SamplingConfig,
                  uniform: torch.Tensor | None) -> torch.Tensor:
    """One token per row: argmax (greedy) or :func:`sample_tokens` with this step's draws.

    Args:
        logits: ``(B, V)`` float32; uniform: ``(B,)`` (ignored when greedy).
    """
    if not sampling.do_sample or uniform is None:
        return logits.argmax(-1)
    return sample_tokens(logits, uniform, sampling.temperature, sampling.top_p, sampling.top_k)


def cut_at_end(tokenizer: Any, new: torch.Tensor, ends: Sequence[int]
               ) -> tuple[list[str], list[int]]:
    """Texts cut at each row's first end token, and tokens per row (its end token included).

    Args:
        new: ``(B, T)`` generated ids (anything after a row's end token is ignored).
    """
    texts, counts = [], []
    end_set = set(ends)
    for row in new.tolist():
        cut = next((i for i, t in enumerate(row) if t in end_set), None)
        kept = row if cut is None else row[:cut]
        texts.append(tokenizer.decode(kept, skip_special_tokens=True))
        counts.append(len(row) if cut is None else cut + 1)
    return texts, counts


def steps_run(new: torch.Tensor, ends: Sequence[int]) -> int:
    """Decoding steps up to the one where the last row ended (all ``T`` if one never did).

    Args:
        new: ``(B, T)`` ids with pad after each row's end token; generation stops when every row
            has ended, so with deferred stop checks (GPU) the surplus steps are cut here.
    """
    if new.shape[1] == 0:
        return 0
    ended = torch.isin(new, torch.tensor(list(ends), dtype=new.dtype, device=new.device))
    if not bool(ended.any(1).all()):
        return new.shape[1]
    return int(ended.int().argmax(1).max()) + 1


def cache_keyword(model: Any) -> str:
    """``cache`` (transformers ≥ 5) or ``past_key_values``: the forward's name for the cache."""
    target = model.get_base_model() if hasattr(model, "get_base_model") else model
    params = inspect.signature(type(target).forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def new_cache(model: Any, static_length: int | None = None) -> Any:
    """A fresh KV cache: dynamic, or static with ``static_length`` slots (prompt + new tokens)."""
    from transformers import DynamicCache, StaticCache

    config = model.get_base_model().config if hasattr(model, "get_base_model") else model.config
    if static_length is not None:
        return StaticCache(config=config, max_cache_len=static_length)
    try:
        return DynamicCache(config=config)  # sliding-window layers get their own cache kind
    except TypeError:  # older transformers
        return DynamicCache()


def static_cache_supported(model: Any) -> bool:
    """Whether transformers can decode this family with a static cache under ``torch.compile``
    (``_can_compile_fullgraph``; ``_supports_static_cache`` before transformers 5)."""
    target = model.get_base_model() if hasattr(model, "get_base_model") else model
    return bool(getattr(target, "_can_compile_fullgraph", False)
                or getattr(target, "_supports_static_cache", False))


# -- model-facing helpers -----------------------------------------------------------------------
def end_token_ids(tokenizer: Any, model: Any) -> list[int]:
    """Token ids that end a sample: EOS, the model's configured EOS, Gemma's ``<end_of_turn>``."""
    ids: set[int] = set()
    candidates: list[Any] = [tokenizer.eos_token_id]
    config = getattr(model, "generation_config", None)
    if config is not None:
        candidates.append(config.eos_token_id)
    for token in ("<end_of_turn>", "<|im_end|>", "<|eot_id|>"):
        # convert_tokens_to_ids, not `in get_vocab()`: the latter builds a 262k-entry dict.
        found = tokenizer.convert_tokens_to_ids(token)
        if isinstance(found, int) and found != tokenizer.unk_token_id:
            candidates.append(found)
    for cand in candidates:
        if isinstance(cand, int):
            ids.add(cand)
        elif isinstance(cand, (list, tuple)):
            ids.update(int(c) for c in cand)
    return sorted(ids)


@contextmanager
def contiguous_head_input(arch: Any) -> Iterator[None]:
    """Hand the unembedding a contiguous input while generating.

    With ``logits_to_keep=1`` the prefill's head reads a ``(B, 1, d)`` slice of the hidden
    states; for that strided 3-D input ``F.linear`` on CPU runs a bmm against ``B`` expanded
    copies of the head (measured: 1.4 s for 44 rows through gemma's 262k-row head, vs 0.3 s
    as one matrix product).  A contiguous copy of the slice costs ``B × d`` floats.
    """
    handle = arch.unembed.register_forward_pre_hook(
        lambda _module, args: (args[0].contiguous(), *args[1:]))
    try:
        yield
    finally:
        handle.remove()


def _steering_hooks(stack: ExitStack, arch: Any, steering: Sequence[Steer | None]) -> None:
    """Enter one ``add_vector`` hook per steered layer with a ``(B, d)`` per-row tensor, built
    once per call on the model's device and in its dtype (the hook then only broadcasts it)."""
    by_layer: dict[int, torch.Tensor] = {}
    param = next(arch.model.parameters())
    for row, steer in enumerate(steering):
        if steer is None or steer.vector is None or steer.alpha == 0:
            continue
        layer = arch.resolve_layer(steer.layer)
        if layer not in by_layer:
            by_layer[layer] = torch.zeros(len(steering), arch.hidden_size)
        by_layer[layer][row] = float(steer.alpha) * steer.vector.detach().float().cpu()
    for layer, vectors in by_layer.items():
        # alpha·v in float32 then one cast, as the hook's own cast did every step before.
        vectors = vectors.to(device=param.device, dtype=param.dtype)
        stack.enter_context(add_vector(arch, layer, vectors, positions=None))


@torch.inference_mode()
def decode(model: Any, ids: torch.Tensor, mask: torch.Tensor, sampling: SamplingConfig,
           keys: Sequence[int], ends: Sequence[int], pad: int,
           on_token: TokenCallback | None = None, rows: Sequence[int] = (),
           static: bool = False, graphs: bool = False) -> torch.Tensor:
    """Our decode loop (what ``generate`` did, without its per-step machinery).

    Args:
        ids, mask: ``(B, L)`` left-padded prompts on the model's device.
        static: a static KV cache of ``L + max_new_tokens`` slots instead of a dynamic one.
        graphs: replay each decoding step as one CUDA graph (needs ``static``; CUDA only).
    Returns:
        ``(B, steps)`` new ids on the CPU, pad after each row's end token (as ``generate``).
    """
    from difflens.models.cuda_graphs import GraphStep, sliding_windows_fit

    batch, length = ids.shape
    total = sampling.max_new_tokens
    device = ids.device
    if total <= 0:
        return torch.zeros(batch, 0, dtype=torch.long)
    uniform = row_uniforms(sampling.seed, keys, total).to(device) if sampling.do_sample else None
    cache = new_cache(model, length + total if static else None)
    keyword = cache_keyword(model)
    # Position ids as generate derives them for left padding (pads get 0, masked anyway).
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
    last = positions[:, -1:]
    full_mask = torch.cat([mask, mask.new_ones(batch, total)], dim=-1)
    end_ids = torch.tensor(list(ends), dtype=torch.long, device=device)
    out = torch.full((batch, total), pad, dtype=torch.long, device=device)
    running = torch.ones(batch, dtype=torch.bool, device=device)
    # A stop check is a device sync: on a GPU without a streaming hook, check every 8 steps
    # and cut the surplus afterwards (steps_run); the tokens are the same.
    every = 8 if device.type == "cuda" and on_token is None else 1

    def forward(step_ids: torch.Tensor, width: int, pos: torch.Tensor) -> torch.Tensor:
        result = model(input_ids=step_ids, attention_mask=full_mask[:, :width], position_ids=pos,
                       use_cache=True, logits_to_keep=1, **{keyword: cache})
        return result.logits[:, -1].to(dtype=torch.float32, copy=True)

    if graphs and not sliding_windows_fit(model, length + total):
        graphs = False  # a sliding cache would fill: its roll is a host-side branch
    step = GraphStep(model, cache, keyword, full_mask) if graphs else None
    logits = forward(ids, length, positions)
    for t in range(total):
        chosen = choose_tokens(logits, sampling, None if uniform is None else uniform[:, t])
        chosen = torch.where(running, chosen, torch.full_like(chosen, pad))
        out[:, t] = chosen
        if on_token is not None:
            on_token(list(rows), chosen.tolist())
        running &= ~torch.isin(chosen, end_ids)
        if t + 1 == total or ((t + 1) % every == 0 and not bool(running.any())):
            break
        pos = last + (t + 1)
        width = length + t + 1
        logits = step(chosen[:, None], width, pos) if step is not None else \
            forward(chosen[:, None], width, pos)
    new = out.cpu()
    return new[:, :steps_run(new, ends)]


def _graphs_wanted(model: Any, device: torch.device) -> bool:
    from difflens.models.device import is_gpu

    return is_gpu(device) and static_cache_supported(model) and not _GRAPHS_FAILED


#: Set after the first failure of the CUDA-graph path: later calls go eager without retrying.
_GRAPHS_FAILED = False
#: Set once the first CUDA-graph call of the process gave the eager loop's tokens.
_GRAPHS_CHECKED = False


def _check_graphs_once(fast: torch.Tensor, eager: torch.Tensor) -> None:
    """The first CUDA-graph decode of a process is also decoded eagerly and must give the same
    tokens: a replay that read stale inputs would give wrong tokens without raising, so this
    turns it into a failure (and the eager path) instead.  Costs one extra decode, once."""
    global _GRAPHS_CHECKED
    if not torch.equal(fast, eager):
        raise RuntimeError("the replayed decoding steps gave other tokens than eager decoding")
    _GRAPHS_CHECKED = True


def _generate_chunk(
    model: Any, arch: Any, tokenizer: Any, prompts: Sequence[str], sampling: SamplingConfig,
    steering: Sequence[Steer | None], keys: Sequence[int], ends: list[int],
    on_token: TokenCallback | None = None, rows: Sequence[int] = (),
) -> tuple[list[str], list[int], int]:
    global _GRAPHS_FAILED
    ids, mask = left_padded(tokenizer, prompts)
    device = next(model.parameters()).device
    ids, mask = ids.to(device), mask.to(device)
    pad = pad_id(tokenizer)
    with ExitStack() as stack:
        _steering_hooks(stack, arch, steering)
        stack.enter_context(contiguous_head_input(arch))
        new = None
        # Streaming calls stay eager: a failure half-way would report tokens twice.
        if on_token is None and _graphs_wanted(model, device):
            try:
                new = decode(model, ids, mask, sampling, keys, ends, pad, static=True,
                             graphs=True)
                if not _GRAPHS_CHECKED:
                    _check_graphs_once(new, decode(model, ids, mask, sampling, keys, ends, pad))
            except Exception as exc:  # any failure of the fast path: the eager one still works
                new = None
                _GRAPHS_FAILED = True
                log.warning("static-cache CUDA-graph decoding failed (%s: %s); decoding eagerly",
                            type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
        if new is None:
            new = decode(model, ids, mask, sampling, keys, ends, pad, on_token, rows)
    texts, counts = cut_at_end(tokenizer, new, ends)
    return texts, counts, new.shape[1]


def generate(
    pair: ModelPair,
    prompts: Sequence[str],
    sampling: SamplingConfig,
    steering: Sequence[Steer | None] | None = None,
    keys: Sequence[int] | None = None,
    batch_size: int = 64,
    side: str = FT,
    on_token: TokenCallback | None = None,
) -> Generations:
    """Continue every prompt, each row with its own steering and random stream.

    Args:
        prompts: fully rendered prompts (use :func:`difflens.data.chat.chat_prompt` for chat).
        steering: one :class:`Steer` (or None) per prompt; None = no steering at all.
        keys: one integer per prompt naming its random stream (default: the row index).  Give
            equal keys to rows that should share noise, e.g. one prompt at several strengths.
        batch_size: rows per ``generate`` call; longer inputs run in chunks, which changes
            nothing in the results (rows are independent) but bounds memory.
        side: ``"ft"`` (default) or ``"base"``.
        on_token: streaming hook ``(rows, tokens)`` called at every decoding step (module
            docstring); None (default) changes nothing.
    """
    n = len(prompts)
    steering = list(steering) if steering is not None else [None] * n
    keys = list(keys) if keys is not None else list(range(n))
    if len(steering) != n or len(keys) != n:
        raise ValueError(f"{n} prompts but {len(steering)} steering rows and {len(keys)} keys")
    texts: list[str] = []
    counts: list[int] = []
    steps = slots = 0
    start = time.perf_counter()
    with pair.use(side) as (model, arch):
        ends = end_token_ids(pair.tokenizer, model)
        for lo in range(0, n, batch_size):
            hi = min(n, lo + batch_size)
            t, c, s = _generate_chunk(model, arch, pair.tokenizer, prompts[lo:hi], sampling,
                                      steering[lo:hi], keys[lo:hi], ends, on_token,
                                      range(lo, hi))
            texts += t
            counts += c
            steps += s
            slots += s * (hi - lo)
    return Generations(texts, counts, steps, slots, time.perf_counter() - start)
