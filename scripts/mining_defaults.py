"""Are Diff Mining's defaults tuned to one organism type?  Hits per ordering and normalisation.

    python scripts/mining_defaults.py RUNS_ROOT [ORGANISM ...]

Reads the finished Diff Mining runs under ``RUNS_ROOT/<organism>/mining`` (as ``difflens eval``
lays them out) and, from each run's stored counts — no model is loaded — ranks the promoted
tokens by every ordering (Top-K occurrence rate: the default; fraction of positive
differences; average difference), with and without token normalisation, and prints the number
of domain words among the top 20 (the card's keywords) per organism, grouped by organism type.
"""

from __future__ import annotations

import sys
from pathlib import Path

from difflens.evaluation.zoo import TOP, keyword_hits
from difflens.methods.mining.orderings import orderings
from difflens.methods.mining.result import CorpusCounts
from difflens.models.loading import LoadOptions, load_causal_lm
from difflens.organisms.registry import load_registry

ORDERINGS = ("topk_occurrence", "fraction_positive", "average_diff")


def main() -> None:
    root = Path(sys.argv[1])
    registry = load_registry()
    names = sys.argv[2:] or sorted(p.parent.parent.name for p in root.glob("*/mining/summary.json"))
    tokenizer = None
    head = f"{'organism':<20} {'type':<12} {'mix':>4} " + " ".join(
        f"{o[:9] + ('+n' if norm else ''):>12}" for norm in (False, True) for o in ORDERINGS)
    print(f"Domain words among the top {TOP} promoted tokens (Diff Mining, stored counts)")
    print(head)
    print("-" * len(head))
    totals: dict[tuple[str, bool], int] = {}
    for name in sorted(names, key=lambda n: (registry[n].type, n)):
        entry = registry[name]
        counts = CorpusCounts.load(root / name / "mining").counts
        if tokenizer is None:
            _, tokenizer = load_causal_lm(entry.base, LoadOptions())  # the pair's tokenizer
        cells = []
        for norm in (False, True):
            table = orderings(counts, tokenizer, top=TOP, normalize=norm)["promoted"]
            for o in ORDERINGS:
                hits = len(keyword_hits([r["token"] for r in table[o][:TOP]],
                                        entry.domain_keywords))
                cells.append(f"{hits:>12}")
                if entry.mix_ratio == 0:
                    totals[(o, norm)] = totals.get((o, norm), 0) + hits
        print(f"{name:<20} {entry.type:<12} {entry.mix_ratio:>4g} " + " ".join(cells))
    print(f"{'total (unmixed)':<38} " + " ".join(
        f"{totals.get((o, norm), 0):>12}" for norm in (False, True) for o in ORDERINGS))


if __name__ == "__main__":
    main()
