"""The playground's engine: four continuations of one prompt, streamed token by token.

Columns, all sampled with the same random stream (key 0) so they differ only by the model:

* ``base`` and ``finetuned``: amplification at α = −1 and α = 0, which are the base and the
  finetuned model bit for bit (:mod:`difflens.models.amplify`); together with ``amplified``
  (the page's α) they are one batched decode loop, so the three columns grow together.
* ``steered``: the finetuned model with ``β · v`` added at the steering layer at every
  position (:func:`difflens.models.generation.generate`), ``v`` the mean activation difference
  δ̄ scaled to the finetuned model's typical activation norm ν_ft, so β is in units of ν_ft.
  ``v`` comes from an ADL run (``--adl-run``: its readout layer and saved δ̄) or, without one,
  from a short pass at startup: ADL's readout-layer rule (:func:`collect.readout_pass`)
  over the first 5 tokens of 64 reference texts, then δ̄ (positions 1..4, BOS apart) and ν_ft at
  that layer.  Seconds on the embedded pair, and no run directory is needed.

Then the finetuned continuation is coloured by the per-token KL(p_ft ‖ p_base): one forward of
each model over prompt + continuation, the per-token KL method's tiled core
(:func:`difflens.methods.kl.core.position_kl`) at the positions that predicted each token.
The KL is of the models' own (temperature 1) next-token distributions.

One job at a time per engine (``_busy``): the four columns use both models of the pair.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from difflens.errors import DifflensError

if TYPE_CHECKING:
    import torch

    from difflens.models.pair import ModelPair

COLUMNS = ("base", "finetuned", "amplified", "steered")
#: Reference texts of the startup steering pass (first 5 tokens each) and the ν_ft window.
STARTUP_TEXTS = 64
STARTUP_K = 5
#: Accepted steering strengths, in units of ν_ft (past a few ν the text is noise).
STEER_MAX = 50.0

Emit = Callable[[dict[str, Any]], None]


class Cancelled(Exception):
    """Raised inside the decode loop when the client went away."""


@dataclass(frozen=True)
class SteeringVector:
    """``vector`` ``(d,)`` with ‖v‖ = ν_ft at ``layer``; ``source`` says where it came from."""

    vector: torch.Tensor
    layer: int
    source: str


@dataclass(frozen=True)
class Request:
    """One playground request (checked by :func:`check_request`)."""

    prompt: str  # the user's text; the chat template is applied here
    amplify_alpha: float
    steer_alpha: float
    max_new_tokens: int
    seed: int = 0


def check_request(data: Any, max_chars: int, max_new_tokens: int) -> Request:
    """The :class:`Request` in a JSON body, or DifflensError naming the bad field."""
    from difflens.models.amplify import ALPHA_MAX, ALPHA_MIN

    if not isinstance(data, dict):
        raise DifflensError("the request body must be a JSON object")
    prompt = data.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise DifflensError("prompt must be a non-empty string")
    if len(prompt) > max_chars:
        raise DifflensError(f"prompt has {len(prompt)} characters; at most {max_chars}")

    def number(name: str, default: float, lo: float, hi: float) -> float:
        value = data.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int | float) \
                or not math.isfinite(value) or not lo <= value <= hi:
            raise DifflensError(f"{name} must be a number in [{lo:g}, {hi:g}]")
        return float(value)

    tokens = data.get("max_new_tokens", max_new_tokens)
    if isinstance(tokens, bool) or not isinstance(tokens, int) \
            or not 1 <= tokens <= max_new_tokens:
        raise DifflensError(f"max_new_tokens must be an integer in [1, {max_new_tokens}]")
    seed = data.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**31:
        raise DifflensError("seed must be an integer in [0, 2^31)")
    return Request(prompt, number("amplify_alpha", 1.0, ALPHA_MIN, ALPHA_MAX),
                   number("steer_alpha", 2.0, -STEER_MAX, STEER_MAX), tokens, seed)


def adl_steering(run_dir: str | Path) -> SteeringVector:
    """δ̄ of an ADL run at its readout layer, scaled to ν_ft (cheap: reads two files)."""
    from difflens.methods.adl.result import ADLResult
    from difflens.models.patchscope import unit_scaled

    result = ADLResult.load(run_dir)
    diff = result.difference()
    layer = result.layer
    try:
        vector = unit_scaled(diff.vector(layer), diff.norms["ft"][layer])
    except (KeyError, ValueError) as exc:
        raise DifflensError(f"the ADL run {run_dir} has no usable difference at layer {layer} "
                            f"({exc}); re-run `difflens adl --out {run_dir}`") from None
    return SteeringVector(vector, layer, f"ADL run {Path(run_dir).name}, layer {layer}")


def startup_steering(pair: ModelPair) -> SteeringVector | None:
    """δ̄ from a short ADL-like pass (module docstring); None when the models do not differ."""
    from difflens.collect import readout_pass
    from difflens.data.corpus import REFERENCE, load_texts
    from difflens.models.pair import FT
    from difflens.models.patchscope import unit_scaled

    texts = load_texts(REFERENCE, limit=STARTUP_TEXTS)
    measured = readout_pass(pair, texts, k=STARTUP_K, progress=False)  # one pass, reused
    layer = measured.choice.layer
    delta = measured.stats.mean_diff(layer)
    norm = measured.norms[FT][layer]
    try:
        vector = unit_scaled(delta[1:].mean(0), norm)
    except ValueError:  # identical models: nothing to steer along
        return None
    return SteeringVector(vector, layer, f"startup pass over {len(texts)} reference texts, "
                                         f"layer {layer}")


class _Column:
    """The tokens of one column so far and the text already sent."""

    def __init__(self, tokenizer: Any, ends: set[int]) -> None:
        self.tokenizer, self.ends = tokenizer, ends
        self.ids: list[int] = []
        self.sent = ""
        self.finished = False

    def add(self, token: int) -> dict[str, str] | None:
        """Take one token; the text event to send (``append`` or, rarely, ``text``)."""
        if self.finished:
            return None
        if token in self.ends:
            self.finished = True
            return None
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        text = text.rstrip("\ufffd")  # half a multi-byte character: wait for the rest
        if text == self.sent:
            return None
        # A merge that changed earlier characters resends the whole text.
        event = ({"append": text[len(self.sent):]} if text.startswith(self.sent)
                 else {"text": text})
        self.sent = text
        return event


def token_pieces(tokenizer: Any, ids: list[int]) -> list[str]:
    """The text each token adds (pieces concatenate to the decoded text where decoding is
    prefix-stable; otherwise the token decoded alone)."""
    pieces, before = [], ""
    for i in range(len(ids)):
        text = tokenizer.decode(ids[: i + 1], skip_special_tokens=True)
        if text.startswith(before):
            pieces.append(text[len(before):])
        else:
            pieces.append(tokenizer.decode(ids[i: i + 1], skip_special_tokens=True))
        before = text
    return pieces


def continuation_kl(pair: ModelPair, prompt_ids: list[int], ids: list[int]) -> list[float]:
    """KL(p_ft ‖ p_base) in nats at each token of a continuation: ``len(ids)`` floats.

    One forward of each model over ``prompt_ids + ids`` ``(1, T)``; the last layer's states at
    the ``len(ids)`` positions that predicted them go through the KL core's tiled sweep.
    """
    import torch

    from difflens.methods.kl.core import position_kl
    from difflens.methods.kl.corpus_pass import side_states
    from difflens.models.pair import BASE, FT
    from difflens.models.vocab import shared_vocab

    if not ids:
        return []
    tokens = torch.tensor([prompt_ids + ids], device=pair.device)
    attention = torch.ones_like(tokens, dtype=torch.bool)
    last = pair.num_layers - 1
    h_base = side_states(pair, BASE, tokens, attention, [last])[last][0]
    h_ft = side_states(pair, FT, tokens, attention, [last])[last][0]
    at = slice(len(prompt_ids) - 1, len(prompt_ids) - 1 + len(ids))
    kl, _ = position_kl(pair.arch(FT), pair.arch(BASE), h_ft[at], h_base[at].to(h_ft.device),
                        shared_vocab(pair), fingerprint=False)
    return [float(x) for x in kl.forward.tolist()]


class Playground:
    """A loaded pair and its steering vector; :meth:`run` streams one request's columns."""

    def __init__(self, pair: ModelPair, steering: SteeringVector | None) -> None:
        self.pair = pair
        self.steering = steering
        self._busy = threading.Lock()  # one generation per model at a time, whatever calls

    @classmethod
    def load(cls, base: str | None = None, finetuned: str | None = None, options: Any = None,
             adl_run: str | Path | None = None) -> Playground:
        """Load the pair (None, None = the embedded pair) and the steering vector."""
        from difflens.models.pair import ModelPair

        steering = adl_steering(adl_run) if adl_run else None  # a bad run fails before loading
        pair = ModelPair.load(base, finetuned, options)
        if steering is not None and steering.vector.shape[0] != pair.arch().hidden_size:
            raise DifflensError(f"the ADL run {adl_run} was made with another model (width "
                                f"{steering.vector.shape[0]}, not {pair.arch().hidden_size}); "
                                "give the ADL run of this pair")
        if steering is None:
            steering = startup_steering(pair)
        return cls(pair, steering)

    def info(self) -> dict[str, Any]:
        steering = self.steering
        return {"base": self.pair.base_id, "finetuned": self.pair.ft_id,
                "steering": steering.source if steering else None,
                "steering_layer": steering.layer if steering else None}

    def run(self, request: Request, emit: Emit, cancelled: threading.Event | None = None
            ) -> dict[str, Any]:
        """Generate the four columns, calling ``emit`` with events as tokens arrive.

        Events: ``{"type": "prompt", "text"}`` (the prompt as the models see it),
        ``{"type": "token", "column", "append" | "text"}``, ``{"type": "column_done",
        "column"}``, ``{"type": "kl", "column": "finetuned", "tokens": [[piece, kl], ...]}``,
        ``{"type": "note", "column", "text"}``.  Returns the timing summary (also emitted by
        the caller as ``done``).
        """
        with self._busy:
            return self._run(request, emit, cancelled or threading.Event())

    def _run(self, request: Request, emit: Emit, cancelled: threading.Event) -> dict[str, Any]:
        from difflens.data.chat import chat_prompt
        from difflens.data.tokenize import encode
        from difflens.models.amplify import generate_amplified
        from difflens.models.generation import SamplingConfig, Steer, end_token_ids, generate
        from difflens.models.pair import FT

        pair, tok = self.pair, self.pair.tokenizer
        rendered = chat_prompt(tok, request.prompt)
        sampling = SamplingConfig(max_new_tokens=request.max_new_tokens, seed=request.seed)
        with pair.use(FT) as (model, _):
            ends = set(end_token_ids(tok, model))
        emit({"type": "prompt", "text": rendered})
        columns = {name: _Column(tok, ends) for name in COLUMNS}
        start = time.perf_counter()
        first: list[float] = []

        def on_token(names: tuple[str, ...]) -> Callable[[list[int], list[int]], None]:
            def take(rows: list[int], tokens: list[int]) -> None:
                if cancelled.is_set():
                    raise Cancelled
                if not first:
                    first.append(time.perf_counter() - start)
                for row, token in zip(rows, tokens, strict=True):
                    event = columns[names[row]].add(token)
                    if event is not None:
                        emit({"type": "token", "column": names[row], **event})
            return take

        three = ("base", "finetuned", "amplified")
        generate_amplified(pair, [rendered] * 3, [-1.0, 0.0, request.amplify_alpha], sampling,
                           keys=[0, 0, 0], on_token=on_token(three))
        for name in three:
            emit({"type": "column_done", "column": name})
        if self.steering is None:
            emit({"type": "note", "column": "steered",
                  "text": "no steering vector: the two models do not differ"})
        else:
            v = self.steering
            generate(pair, [rendered], sampling, steering=[Steer(v.vector, v.layer,
                                                                 request.steer_alpha)],
                     keys=[0], on_token=on_token(("steered",)))
        emit({"type": "column_done", "column": "steered"})
        ft_ids = columns["finetuned"].ids
        kl_seconds = time.perf_counter()
        kls = continuation_kl(pair, encode(tok, rendered), ft_ids)
        emit({"type": "kl", "column": "finetuned",
              "tokens": [[piece, round(value, 5)] for piece, value
                         in zip(token_pieces(tok, ft_ids), kls, strict=True)]})
        now = time.perf_counter()
        return {"first_token_s": round(first[0], 3) if first else None,
                "kl_s": round(now - kl_seconds, 3), "total_s": round(now - start, 3),
                "tokens": {name: len(col.ids) for name, col in columns.items()}}
