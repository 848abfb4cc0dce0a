"""Reading the components: logit lens (both signs), Patchscope (both signs), steering (+c).

Everything here is the engine's (``models/lens.py``, ``models/patchscope.py``,
``models/steering.py``) applied to unit components; nothing is re-implemented.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from difflens.data.tokenize import decode_tokens
from difflens.methods.pca.contexts import SIGNS
from difflens.models.lens import logit_lens
from difflens.models.pair import FT

if TYPE_CHECKING:
    from difflens.models.pair import ModelPair
    from difflens.models.steering import SteeringConfig

SCALE_TOKENS = 20  # tokens kept per Patchscope scale in the artifact


def lens_readouts(pair: ModelPair, components: torch.Tensor, top: int) -> list[dict[str, Any]]:
    """Logit lens of ``+c`` and ``−c`` for each row of ``components`` ``(C, d)``.

    Returns per component ``{"component": i, "positive": {"tokens", "ids", "probs"},
    "negative": {...}}`` (``top`` tokens each, most probable first)."""
    n = components.shape[0]
    read = logit_lens(pair.arch(FT), torch.cat([components, -components]).float(), top)
    out = []
    for i in range(n):
        entry: dict[str, Any] = {"component": i}
        for sign, row in zip(SIGNS, (i, n + i), strict=True):
            ids = read.ids[row].tolist()
            entry[sign] = {"tokens": decode_tokens(pair.tokenizer, ids), "ids": ids,
                           "probs": [round(float(p), 6) for p in read.probs[row]]}
        out.append(entry)
    return out


def patchscope_readouts(pair: ModelPair, components: torch.Tensor, layer: int, norm_ft: float,
                        grader: Any, top: int) -> list[dict[str, Any]]:
    """Patchscope of ``±c`` per component at ``layer`` (scales in ν_ft units), with the
    grader's choice of scale when it has ``choose_patchscope_scale``.

    Returns per component ``{"component": i, "positive": {"chosen", "scales"}, "negative":
    ...}``; ``scales`` keep :data:`SCALE_TOKENS` tokens each."""
    from difflens.models.patchscope import choose_scale, patchscope_readout

    out = []
    for i, comp in enumerate(components):
        entry: dict[str, Any] = {"component": i}
        for sign, vector in zip(SIGNS, (comp, -comp), strict=True):
            read = patchscope_readout(pair, vector, layer, norm_ft, top=top,
                                      name=f"{'+' if sign == 'positive' else '−'}PC{i + 1}")
            chosen = choose_scale(read, grader) if hasattr(grader, "choose_patchscope_scale") \
                else None
            scales = [{**row, "tokens": row["tokens"][:SCALE_TOKENS],
                       "ids": row["ids"][:SCALE_TOKENS], "probs": row["probs"][:SCALE_TOKENS]}
                      for row in read["scales"]]
            entry[sign] = {"chosen": chosen, "scales": scales, "mode": read["mode"]}
        out.append(entry)
    return out


def steering_runs(pair: ModelPair, components: torch.Tensor, layer: int, norm_ft: float,
                  grader: Any, prompts: list[str], config: SteeringConfig
                  ) -> list[dict[str, Any]]:
    """Steer along ``+c`` (oriented: the way the finetune moved) for each row of
    ``components``, with ADL's coherence-bounded strength search (strengths in ν_ft units)."""
    from difflens.models.steering import steer_along

    out = []
    for i, comp in enumerate(components):
        result = steer_along(pair, comp, layer, norm_ft, grader, prompts, config,
                             name=f"PC{i + 1}")
        out.append({"component": i, "sign": "positive", **result})
    return out
