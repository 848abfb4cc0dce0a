"""Steering stage of ADL: the finetuned model steered with δ̄ at the readout layer.

The search (batched look-ahead bisection for the largest coherent strength, confirmation of the
final samples, base-model samples) is engine code in :mod:`difflens.models.steering`; see its
module docstring for the method.  This module runs it on δ̄.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from difflens.models.steering import SteeringConfig, steer_along

if TYPE_CHECKING:
    import torch

    from difflens.models.pair import ModelPair


def steering_stage(
    pair: ModelPair, vector: torch.Tensor, layer: int, norm_ft: float, grader: Any,
    prompts: Sequence[str], config: SteeringConfig | None = None,
) -> dict[str, Any]:
    """Find the largest coherent steering strength and sample with it.

    Args:
        vector: raw δ̄ ``(d,)``; rescaled to ``v = δ̄/‖δ̄‖ · norm_ft``.
        norm_ft: ν_ft at ``layer``; strengths are multiples of it.
        grader: anything with ``coherent(list[str]) -> list[bool]`` (``set_reference`` is used
            when present and ``config.unsteered_reference``).
        prompts: neutral user messages (plain text; rendered with the chat template here), at
            least ``config.final_prompts`` for the full sample set.
    Returns:
        A JSON-able dict:

        - ``layer``, ``norm_ft``, ``vector_norm`` (‖δ̄‖), ``config`` (all settings, sampling
          included, and the derived ``steps``);
        - ``found``, ``alpha`` (ν_ft units, of the final samples; None when not found),
          ``search_alpha`` (the search's strength, ≥ ``alpha`` after back-offs), ``reason``
          (why not found);
        - ``baseline_coherent_fraction``: the grader's verdict on the unsteered search samples
          (low means the grader rejects the model's ordinary output), ``coherence_reference``;
        - ``search``: ``probes`` (every strength tried: ``alpha``, ``coherent_fraction``,
          ``round``, ``on_path``), ``decisions``, ``bracket``, ``rounds``,
          ``upper_bound_coherent`` (every decision passed: raise ``alpha_max``), ``lookahead``,
          ``generate_seconds``, ``grade_seconds`` and ``batches`` (per generate call: strengths,
          rows, generated tokens, token slots, seconds, the samples per strength);
        - ``samples``: ``prompts``, ``alpha``, ``steered`` (empty when not found),
          ``unsteered``, ``confirmed`` (the steered samples kept ``coherent_fraction``),
          ``confirmations`` (``alpha``, ``coherent_fraction`` per strength drawn),
          ``steered_tokens``, ``steered_seconds``, ``sampling``; with ``config.base_samples``
          and a strength found also ``base_steered`` / ``base_unsteered`` (the base model
          with and without the same steering, :func:`base_samples`), ``base_tokens``,
          ``base_seconds``;
        - ``generated_tokens``, ``token_slots`` (rows × steps computed), ``seconds``, ``grader``.

        No coherent strength, or a zero δ̄, is a result with ``found: false`` and a ``reason``,
        not an error.
    """
    return steer_along(pair, vector, layer, norm_ft, grader, prompts, config)
