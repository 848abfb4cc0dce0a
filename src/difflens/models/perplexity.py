"""Perplexity of texts under the base model: the offline coherence grader's fluency signal."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch

from difflens.data.padding import pad_id, pad_rows
from difflens.data.tokenize import encode
from difflens.models.hooks import capture, run_forward
from difflens.models.nll import token_ce
from difflens.models.pair import BASE

if TYPE_CHECKING:
    from difflens.models.pair import ModelPair


def base_perplexity(
    pair: ModelPair, batch_size: int = 8, max_tokens: int = 256
) -> Callable[[list[str]], list[float]]:
    """A ``texts -> perplexities`` function under the BASE model (adapter disabled).

    Each text is scored on its own with one BOS prepended (``exp`` of the mean next-token NLL of
    its tokens, at most ``max_tokens``).  Texts are right-padded in batches; the NLL is computed
    from the last layer's output in chunks of valid positions (:func:`token_ce`), so memory
    stays bounded instead of ``B × T × V`` (262k-token vocabularies make that gigabytes).  A
    text with no tokens gets ``inf``.
    """

    def perplexity(texts: list[str]) -> list[float]:
        out: list[float] = []
        for lo in range(0, len(texts), batch_size):
            out += _batch_perplexity(pair, texts[lo:lo + batch_size], max_tokens)
        return out

    return perplexity


@torch.inference_mode()
def _batch_perplexity(pair: ModelPair, texts: Sequence[str], max_tokens: int) -> list[float]:
    tok = pair.tokenizer
    ids, mask = pad_rows([encode(tok, t)[: max_tokens + 1] for t in texts], pad_id(tok))
    with pair.use(BASE) as (model, arch):
        last = arch.num_layers - 1
        device = next(model.parameters()).device
        with capture(arch, [last]) as store:
            run_forward(model, input_ids=ids.to(device), attention_mask=mask.to(device))
        # The residual output entering the final norm; NLL over every text's tokens at once.
        sums = token_ce(arch, store[last], ids, mask).cpu()
    counts = mask[:, 1:].sum(1)
    return [float(math.exp(s / n)) if n > 0 else math.inf
            for s, n in zip(sums.tolist(), counts.tolist(), strict=True)]
