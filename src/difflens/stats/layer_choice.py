"""Choosing the readout layer from a run's own data, never from the answer (ADL, KL, PCA).

The rule sees one number per layer: the relative difference ‖δ̄_ℓ‖ / ν^ft_ℓ (the mean
difference over positions 1..k-1 in units of a typical finetuned activation).  It never sees
token readouts, keywords or descriptions, so it cannot pick a layer because that layer "read
the domain".

Rule: the layer where the relative difference peaks, the last layer excluded.  Why this one:

* the finetune's constant shift is read best where it is largest against the activations it
  sits in — there it dominates the logit lens and the steering vector carries the most of it;
* the last layer is excluded because there δ̄ is the output shift itself (the model's
  next-token change, not a representation other layers still process): steering or
  Patchscope at the last layer can only bias the next token, and the last layer's relative
  difference is the largest on every pair we measured whatever the organism (so it would
  carry no information about the run).

Measured on the embedded gemma-3-270m (18 layers) over eleven organisms of nine types and six
training recipes (README, "Readout layer"), this rule reads as many domain words as the best
fixed layer chosen in hindsight, and more than the old fixed depth (0.75).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

RULE = "relative-difference peak below the last layer"


@dataclass(frozen=True)
class LayerChoice:
    """The readout layer of a run and why it was chosen."""

    layer: int
    rule: str
    """:data:`RULE`, or ``"--layer"`` when the user set it."""
    reason: str
    """One line for the terminal summary and the report."""
    relative_norms: dict[int, float]
    """‖δ̄‖/ν_ft per layer, the only input of the rule."""

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["relative_norms"] = {str(k): v for k, v in self.relative_norms.items()}
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LayerChoice:
        return cls(int(data["layer"]), str(data["rule"]), str(data["reason"]),
                   {int(k): float(v) for k, v in data["relative_norms"].items()})


def choose_layer(relative_norms: dict[int, float], n_layers: int) -> LayerChoice:
    """The layer whose relative difference ‖δ̄‖/ν_ft peaks, the last layer excluded.

    Args:
        relative_norms: ``layer -> ‖δ̄‖/ν_ft`` for the collected layers (all of them, as ADL
            collects every layer).
        n_layers: the model's layer count; layer ``n_layers - 1`` is never chosen unless it is
            the only one collected.
    """
    if not relative_norms:
        raise ValueError("choose_layer needs at least one layer's relative difference")
    candidates = {lay: v for lay, v in relative_norms.items() if lay < n_layers - 1}
    if not candidates:
        candidates = dict(relative_norms)
    # Ties go to the deeper layer (readouts sharpen with depth on every pair measured).
    layer = max(candidates, key=lambda lay: (candidates[lay], lay))
    ranked = sorted(candidates.values(), reverse=True)
    runner_up = ranked[1] if len(ranked) > 1 else None
    margin = "" if runner_up is None else f", next highest {runner_up:.3f}"
    reason = (f"layer {layer} of 0..{n_layers - 1}: ‖δ̄‖/ν_ft peaks there at "
              f"{candidates[layer]:.3f}{margin} (last layer excluded)")
    return LayerChoice(layer, RULE, reason, dict(sorted(relative_norms.items())))


def user_layer(layer: int, n_layers: int, relative_norms: dict[int, float]) -> LayerChoice:
    """The choice when ``--layer`` sets the layer (recorded the same way)."""
    value = relative_norms.get(layer)
    at = "" if value is None else f" (‖δ̄‖/ν_ft {value:.3f} there)"
    return LayerChoice(layer, "--layer", f"layer {layer} of 0..{n_layers - 1} set by --layer{at}",
                       dict(sorted(relative_norms.items())))
