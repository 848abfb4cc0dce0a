"""How well rules for ADL's readout layer generalise: hits per organism under each rule.

Input per organism: the logit lens's domain-word hits at every layer (top 20 of δ̄) and the
relative difference ‖δ̄‖/ν_ft per layer — both in every ADL run, which reads all layers.  The
rules compared:

* ``fixed 0.75`` — the old default (a relative depth per model family);
* ``chosen`` — ADL's rule (:func:`difflens.stats.layer_choice.choose_layer`), which sees
  only the relative differences;
* ``best fixed (hindsight)`` — the one layer with the most hits summed over the set it is
  scored on: a ceiling for any fixed layer, tuned on the answer;
* ``best fixed (leave-one-out)`` — for each organism, the fixed layer with the most hits over
  all the *other* organisms, applied to it: how a layer tuned on a zoo carries to a new one;
* ``per-organism best`` — the best layer of each organism (the unreachable ceiling).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from difflens.stats.layer_choice import choose_layer

OLD_DEPTH = 0.75  # the fixed Gemma 3 depth before the readout layer was chosen from the data


@dataclass(frozen=True)
class LayerEvidence:
    """One organism's per-layer evidence (from its ADL run)."""

    organism: str
    type: str
    group: str  # "zoo" or "generalisation"
    mix_ratio: float
    hits: dict[int, int]  # layer -> domain words among the top 20 of δ̄'s logit lens
    relative_norms: dict[int, float]  # layer -> ‖δ̄‖/ν_ft

    @property
    def n_layers(self) -> int:
        return max(self.hits) + 1


def old_default_layer(n_layers: int) -> int:
    """The fixed relative depth 0.75, resolved as ``--layer 0.75`` is."""
    return round(OLD_DEPTH * (n_layers - 1))


def _best_fixed(evidence: list[LayerEvidence]) -> int | None:
    layers = set.intersection(*(set(e.hits) for e in evidence)) if evidence else set()
    if not layers:
        return None
    # Ties go to the deeper layer, as the chosen rule's.
    return max(layers, key=lambda lay: (sum(e.hits[lay] for e in evidence), lay))


def compare_rules(evidence: list[LayerEvidence]) -> dict[str, Any]:
    """Hits per organism under each rule, with totals per group (zoo / generalisation).

    Returns ``{"organisms": [{organism, type, group, mix_ratio, layers: {rule: layer},
    hits: {rule: n}}], "totals": {group: {rule: n}}, "hindsight_layer": {group: layer}}``.
    Leave-one-out uses every other organism of *both* groups.
    """
    hindsight = {g: _best_fixed([e for e in evidence if e.group == g])
                 for g in sorted({e.group for e in evidence})}
    rows = []
    for e in evidence:
        others = [o for o in evidence if o.organism != e.organism]
        layers = {
            "fixed 0.75": old_default_layer(e.n_layers),
            "chosen": choose_layer(e.relative_norms, e.n_layers).layer,
            "best fixed (hindsight)": hindsight[e.group],
            "best fixed (leave-one-out)": _best_fixed(others),
            "per-organism best": max(e.hits, key=lambda lay: (e.hits[lay], lay)),
        }
        rows.append({"organism": e.organism, "type": e.type, "group": e.group,
                     "mix_ratio": e.mix_ratio, "layers": layers,
                     "hits": {rule: (e.hits.get(lay, 0) if lay is not None else None)
                              for rule, lay in layers.items()}})
    totals: dict[str, dict[str, int]] = {}
    for row in rows:
        group = totals.setdefault(row["group"], {})
        for rule, n in row["hits"].items():
            group[rule] = group.get(rule, 0) + (n or 0)
    return {"organisms": rows, "totals": totals, "hindsight_layer": hindsight}


def format_rules_table(comparison: dict[str, Any]) -> str:
    """Plain-text table: hits (layer) per organism and rule, then totals per group."""
    rules = list(comparison["organisms"][0]["hits"]) if comparison["organisms"] else []
    short = {"fixed 0.75": "old 0.75", "chosen": "chosen", "best fixed (hindsight)": "hindsight",
             "best fixed (leave-one-out)": "LOO fixed", "per-organism best": "own best"}
    head = f"{'organism':<20} {'type':<12} {'set':<6} " + " ".join(
        f"{short.get(r, r):>10}" for r in rules)
    lines = ["Logit-lens domain words in the top 20 (layer) under each readout-layer rule:",
             head, "-" * len(head)]
    for row in comparison["organisms"]:
        cells = [f"{row['hits'][r] if row['hits'][r] is not None else '-':>5} "
                 f"({row['layers'][r] if row['layers'][r] is not None else '-':>2})"
                 for r in rules]
        lines.append(f"{row['organism']:<20} {row['type']:<12} {row['group'][:6]:<6} "
                     + " ".join(f"{c:>10}" for c in cells))
    for group, totals in comparison["totals"].items():
        lines.append(f"{'total ' + group:<40} " + " ".join(f"{totals[r]:>10}" for r in rules))
    return "\n".join(lines)
