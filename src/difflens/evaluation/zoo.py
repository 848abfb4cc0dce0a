"""Method-level evaluation over the organism zoo: does each method's readout name the domain?

For every built organism, an ADL run and a Diff Mining run (reused when already there) live under
``<runs_root>/<organism>/{adl,mining}`` — the layout the agents read too.  From them, per
organism:

* **keyword hits**: how many of the top-20 tokens of ADL's logit lens (default layer, mean over
  positions 1..k−1), of ADL's Patchscope (chosen scale) and of Diff Mining's promoted list are
  words of the organism's domain (``domain_keywords`` of its card, used for evaluation only);
* the same top-20 lists scored against every *other* organism's keywords: the cross-domain
  control (a readout that names any domain would score everywhere);
* ‖δ̄‖/ν_ft at the readout layer, token relevance, steering similarity and causal ΔCE as the
  runs stored them (graded offline unless an endpoint was configured).

Organisms trained with general text mixed in (card ``mix_ratio > 0``) are compared with their
unmixed twin (same documents hash): the data-mixing ablation of seed 003.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from difflens.evaluation.layer_rules import LayerEvidence, compare_rules, format_rules_table
from difflens.evaluation.metrics import adl_metrics, mining_metrics
from difflens.methods.adl.result import SUMMARY_FILE as ADL_SUMMARY
from difflens.methods.adl.result import ADLResult
from difflens.methods.kl.result import SUMMARY_FILE as KL_SUMMARY
from difflens.methods.kl.result import KLResult
from difflens.methods.mining.result import SUMMARY_FILE as MINING_SUMMARY
from difflens.methods.mining.result import MiningResult
from difflens.methods.pca.result import SUMMARY_FILE as PCA_SUMMARY
from difflens.methods.pca.result import PCAResult
from difflens.methods.weights.result import SUMMARY_FILE as WEIGHTS_SUMMARY
from difflens.methods.weights.result import weights_tokens
from difflens.organisms.registry import OrganismEntry

log = logging.getLogger(__name__)
TOP = 20  # tokens per readout scored, as in the seed's token relevance
READOUTS = ("adl_logit_lens", "adl_patchscope", "mining", "kl_fingerprint", "pca_pc1",
            "pca_pc2", "pca_pc3", "weights")
#: Column headers of the zoo table, one per readout.
HEADERS = {"adl_logit_lens": "lens", "adl_patchscope": "patch", "mining": "mining",
           "kl_fingerprint": "kl", "pca_pc1": "pc1", "pca_pc2": "pc2", "pca_pc3": "pc3",
           "weights": "weights"}
PCA_COMPONENTS = 3  # principal components scored per organism
_SUFFIXES = ("ing", "ers", "er", "ed", "es", "s")


def _forms(word: str) -> set[str]:
    """The word and what remains after stripping one inflection suffix (≥ 4 letters left):
    'cupcakes' → {cupcakes, cupcake, cupcak}, so it meets 'cupcake' → {cupcake}."""
    forms = {word}
    if word.endswith("ed") and len(word) >= 5:
        forms.add(word[:-1])  # 'baked' → 'bake', 'saved' → 'save'
    for suffix in _SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 4:
            forms.add(word[: -len(suffix)])
    return forms


def normalize_token(token: str) -> str:
    """Lower-case letters of a vocabulary token, accents folded ('▁Cakes' → 'cakes', 'Ġwaves'
    → 'waves', ' Français' → 'francais': without folding, accented words lost their letters)."""
    text = token.replace("Ġ", " ").replace("▁", " ").lower()
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    return re.sub(r"[^a-z]", "", folded)


def keyword_hits(tokens: list[str], keywords: list[str]) -> list[str]:
    """The tokens (as given) that are domain words: equal to a keyword after normalising, or
    sharing a form with one (plural / -ing / -ed / -er stripped).  Tokens under 3 letters never
    count (sub-word pieces like 'ca' would match by accident)."""
    known = set().union(*(_forms(normalize_token(k)) for k in keywords)) if keywords else set()
    hits = []
    for token in tokens:
        word = normalize_token(token)
        if len(word) >= 3 and _forms(word) & known:
            hits.append(token)
    return hits


def _adl_result(adl: Path) -> ADLResult | None:
    """The finished ADL run in ``adl`` (its logit lens read once), else None."""
    if not (adl / ADL_SUMMARY).is_file():
        return None
    return ADLResult.load(adl)


def readout_tokens(runs_root: Path | str, organism: str,
                   adl: ADLResult | None = None) -> dict[str, list[str]]:
    """Top-20 tokens of each readout of ``<runs_root>/<organism>``'s finished runs
    (``adl``: the ADL run, when the caller already read it)."""
    base = Path(runs_root) / organism
    out: dict[str, list[str]] = {}
    adl = adl or _adl_result(base / "adl")
    if adl is not None:
        out["adl_logit_lens"] = adl.readout().mean.tokens[:TOP]
        patch = adl.patchscope
        if patch is not None:
            out["adl_patchscope"] = (patch.chosen.coherent_tokens if patch.chosen else [])[:TOP]
    if (base / "mining" / MINING_SUMMARY).is_file():
        out["mining"] = MiningResult.load(base / "mining").top_tokens(TOP)
    if (base / "kl" / KL_SUMMARY).is_file():
        out["kl_fingerprint"] = KLResult.load(base / "kl").fingerprint_tokens(TOP)
    if (base / "pca" / PCA_SUMMARY).is_file():
        pca = PCAResult.load(base / "pca")
        for row in pca.readouts.get(pca.layer, [])[:PCA_COMPONENTS]:
            # "positive" is the method's own orientation (the mean difference projects
            # positively); both signs are kept, as the sign of an eigenvector is arbitrary.
            name = f"pca_pc{int(row['component']) + 1}"
            out[f"{name}+"] = row["positive"]["tokens"][:TOP]
            out[f"{name}-"] = row["negative"]["tokens"][:TOP]
    if (base / "weights" / WEIGHTS_SUMMARY).is_file():
        out["weights"] = weights_tokens(base / "weights", TOP)
    return out


def best_sign(tokens: dict[str, list[str]], hits: dict[str, list[str]],
              cross: dict[str, dict[str, int]]) -> None:
    """Add ``pca_pcN`` readouts: of ``pca_pcN+`` / ``pca_pcN-``, the sign with more own-domain
    hits (ties: the method's own orientation, ``+``).  Picking the sign with the keywords makes
    this an upper bound of what a reader who does not know the answer sees; the ``+`` entries
    (the method's own sign rule) stay in the record beside it."""
    for i in range(1, PCA_COMPONENTS + 1):
        plus, minus = f"pca_pc{i}+", f"pca_pc{i}-"
        if plus not in hits:
            continue
        pick = minus if len(hits.get(minus, [])) > len(hits[plus]) else plus
        name = f"pca_pc{i}"
        tokens[name], hits[name], cross[name] = tokens[pick], hits[pick], cross[pick]


@dataclass
class OrganismSignals:
    """What the methods found for one organism (JSON-able via :meth:`to_dict`)."""

    organism: str
    type: str
    mix_ratio: float
    tokens: dict[str, list[str]]  # readout -> top-20 tokens
    hits: dict[str, list[str]]  # readout -> tokens that are domain words
    cross_hits: dict[str, dict[str, int]]  # readout -> other organism -> hit count
    relative_norm: float | None  # ‖δ̄‖/ν_ft at the ADL readout layer
    metrics: dict[str, Any] = field(default_factory=dict)  # relevance, similarity, causal
    lens_hits_by_layer: dict[str, int] = field(default_factory=dict)  # every collected layer
    lens_domain_mass: float | None = None  # logit-lens probability on domain words (top 100)
    group: str = "zoo"  # "zoo" (defaults were chosen on it) or "generalisation" (held out)
    relative_norms_by_layer: dict[str, float] = field(default_factory=dict)  # ‖δ̄‖/ν_ft

    def hit_count(self, readout: str) -> int | None:
        return len(self.hits[readout]) if readout in self.hits else None

    def to_dict(self) -> dict[str, Any]:
        return {"organism": self.organism, "type": self.type, "mix_ratio": self.mix_ratio,
                "tokens": self.tokens, "hits": self.hits,
                "hit_counts": {r: len(h) for r, h in self.hits.items()},
                "cross_hits": self.cross_hits, "relative_norm": self.relative_norm,
                "metrics": self.metrics, "lens_hits_by_layer": self.lens_hits_by_layer,
                "lens_domain_mass": self.lens_domain_mass, "group": self.group,
                "relative_norms_by_layer": self.relative_norms_by_layer}


def organism_signals(runs_root: Path | str, entry: OrganismEntry,
                     registry: dict[str, OrganismEntry]) -> OrganismSignals:
    """Score ``entry``'s finished runs against its own and every other domain's keywords."""
    base = Path(runs_root) / entry.name
    adl = _adl_result(base / "adl")
    tokens = readout_tokens(runs_root, entry.name, adl)
    hits = {r: keyword_hits(t, entry.domain_keywords) for r, t in tokens.items()}
    others = {n: e for n, e in registry.items()
              if n != entry.name and e.domain_keywords and twin_key(e) != twin_key(entry)}
    cross = {r: {n: len(keyword_hits(t, e.domain_keywords)) for n, e in others.items()}
             for r, t in tokens.items()}
    best_sign(tokens, hits, cross)
    relative, by_layer, mass, rel_by_layer = None, {}, None, {}
    if adl is not None:
        readout = adl.readout()
        relative = readout.relative_norm
        # Does not saturate like a top-20 count: how much of the readout's probability the
        # domain words carry (tokens beyond the stored top 100 count as non-domain).
        mean = readout.mean
        domain = set(keyword_hits(mean.tokens, entry.domain_keywords))
        mass = float(sum(p for t, p in zip(mean.tokens, mean.probs, strict=False)
                         if t in domain))
        # Every layer the collection pass read: where in depth the domain becomes readable.
        # (String keys: these fields go to zoo.json as they are.)
        by_layer = {str(lay): len(keyword_hits(info.mean.tokens[:TOP], entry.domain_keywords))
                    for lay, info in adl.lens.items()}
        rel_by_layer = {str(lay): info.relative_norm for lay, info in adl.lens.items()}
    metrics = {"adl": adl_metrics(base / "adl"), "mining": mining_metrics(base / "mining")}
    return OrganismSignals(entry.name, entry.type, entry.mix_ratio, tokens, hits, cross,
                           relative, metrics, by_layer, mass,
                           str(entry.extra.get("set") or "zoo"), rel_by_layer)


def twin_key(entry: OrganismEntry) -> str:
    """Organisms trained on the same documents share this key (mixed variants and their twin)."""
    return entry.documents_hash or entry.name


def mixing_ablation(signals: dict[str, OrganismSignals],
                    registry: dict[str, OrganismEntry]) -> list[dict[str, Any]]:
    """One row per mixed organism with an unmixed twin: each signal, mixed vs unmixed."""
    rows = []
    for name, mixed in signals.items():
        if mixed.mix_ratio <= 0:
            continue
        twins = [s for n, s in signals.items()
                 if s.mix_ratio == 0 and twin_key(registry[n]) == twin_key(registry[name])]
        if not twins:
            continue
        twin = twins[0]
        row: dict[str, Any] = {"mixed": name, "unmixed": twin.organism,
                               "mix_ratio": mixed.mix_ratio}
        for readout in READOUTS:
            if readout in mixed.hits and readout in twin.hits:
                row[f"{readout}_hits"] = [len(twin.hits[readout]), len(mixed.hits[readout])]
        for key in ("relative_norm", "lens_domain_mass"):
            a, b = getattr(twin, key), getattr(mixed, key)
            if a is not None and b is not None:
                row[key] = [a, b]
        for key, get in (("adl_relevance", _lens_relevance), ("steered_similarity", _steered)):
            a, b = get(twin), get(mixed)
            if a is not None and b is not None:
                row[key] = [a, b]
        rows.append(row)
    return rows


def _lens_relevance(s: OrganismSignals) -> float | None:
    return (s.metrics.get("adl", {}).get("token_relevance") or {}).get("logit lens δ̄")


def _steered(s: OrganismSignals) -> float | None:
    return (s.metrics.get("adl", {}).get("steering_similarity") or {}).get("steered_finetune")


def format_zoo_table(signals: dict[str, OrganismSignals], ablation: list[dict[str, Any]]) -> str:
    """Plain-text table: domain-word hits per readout (own / best other domain), ‖δ̄‖/ν_ft."""
    shown = [r for r in READOUTS if any(r in s.hits for s in signals.values())]
    head = (f"{'organism':<20} {'type':<13} {'mix':>4}  "
            + " ".join(f"{HEADERS[r]:>7}" for r in shown) + f"  {'|d|/nu':>7}")
    lines = ["Domain words among the top-20 tokens (own domain / best other domain):", head,
             "-" * len(head)]
    for s in signals.values():
        cells = []
        for readout in shown:
            if readout not in s.hits:
                cells.append(f"{'-':>7}")
                continue
            other = max(s.cross_hits[readout].values(), default=0)
            cells.append(f"{len(s.hits[readout]):>3}/{other:<3}")
        norm = f"{s.relative_norm:7.3f}" if s.relative_norm is not None else f"{'-':>7}"
        lines.append(f"{s.organism:<20} {s.type:<13} {s.mix_ratio:>4g}  {' '.join(cells)}  "
                     f"{norm}")
    for row in ablation:
        parts = [f"{k.removesuffix('_hits')} {v[0]:.3g} -> {v[1]:.3g}"
                 for k, v in row.items() if isinstance(v, list)]
        lines.append(f"mixing ablation {row['unmixed']} -> {row['mixed']} "
                     f"(1:{row['mix_ratio']:g}): " + "; ".join(parts))
    return "\n".join(lines)


def layer_rule_comparison(signals: dict[str, OrganismSignals]) -> dict[str, Any] | None:
    """Readout-layer rules compared over every organism whose ADL run read several layers."""
    evidence = [LayerEvidence(s.organism, s.type, s.group, s.mix_ratio,
                              {int(k): v for k, v in s.lens_hits_by_layer.items()},
                              {int(k): v for k, v in s.relative_norms_by_layer.items()})
                for s in signals.values() if len(s.lens_hits_by_layer) > 1]
    return compare_rules(evidence) if evidence else None


def hits_by_type(signals: dict[str, OrganismSignals]) -> dict[str, dict[str, Any]]:
    """Mean domain-word hits per readout and organism type (unmixed organisms only)."""
    out: dict[str, dict[str, Any]] = {}
    for s in signals.values():
        if s.mix_ratio > 0:
            continue
        row = out.setdefault(s.type, {"organisms": []})
        row["organisms"].append(s.organism)
        for readout in READOUTS:
            if readout in s.hits:
                row.setdefault(readout, []).append(len(s.hits[readout]))
    return out


def format_type_table(by_type: dict[str, dict[str, Any]]) -> str:
    """Plain text: per organism type, the hits of each readout (one number per organism)."""
    shown = [r for r in READOUTS if any(r in row for row in by_type.values())]
    head = f"{'type':<13} {'organisms':<38} " + " ".join(f"{HEADERS[r]:>9}" for r in shown)
    lines = ["Domain words in the top 20 by organism type (unmixed organisms):", head,
             "-" * len(head)]
    for kind, row in sorted(by_type.items()):
        cells = [",".join(str(n) for n in row.get(r, [])) or "-" for r in shown]
        lines.append(f"{kind:<13} {', '.join(row['organisms'])[:38]:<38} "
                     + " ".join(f"{c:>9}" for c in cells))
    return "\n".join(lines)


def evaluate_zoo(registry: dict[str, OrganismEntry], names: list[str], runs_root: Path | str,
                 out: Path | str | None = None) -> dict[str, Any]:
    """Signals of every organism in ``names`` with finished runs, the mixing ablation and the
    table; written to ``<out>/zoo.json`` and ``<out>/zoo.txt`` when ``out`` is given."""
    signals = {}
    missing = []
    for name in names:
        if not (Path(runs_root) / name / "adl" / ADL_SUMMARY).is_file():
            missing.append(name)
            continue
        signals[name] = organism_signals(runs_root, registry[name], registry)
    ablation = mixing_ablation(signals, registry)
    table = format_zoo_table(signals, ablation)
    rules = layer_rule_comparison(signals)
    if rules:
        table += "\n\n" + format_rules_table(rules)
    by_type = hits_by_type(signals)
    if by_type:
        table += "\n\n" + format_type_table(by_type)
    result = {"runs_root": str(runs_root), "top": TOP,
              "organisms": {n: s.to_dict() for n, s in signals.items()},
              "mixing_ablation": ablation, "layer_rules": rules, "hits_by_type": by_type,
              "without_runs": missing, "table": table}
    if out is not None:
        from difflens.io.artifacts import atomic_write_bytes, write_json

        write_json(Path(out) / "zoo.json", result)
        atomic_write_bytes(Path(out) / "zoo.txt", (table + "\n").encode("utf-8"))
    return result
