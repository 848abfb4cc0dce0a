"""Bootstrap confidence intervals and the summary table of agent grades."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

CONFIDENCE = 0.95


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def bootstrap_ci(values: Sequence[float], stat: Callable[[Sequence[float]], float] = _mean,
                 n_boot: int = 2000, confidence: float = CONFIDENCE,
                 seed: int = 0) -> dict[str, float] | None:
    """``{"value", "low", "high"}``: percentile bootstrap over ``values`` (None when empty).

    Runs are resampled with replacement; with a single run the interval is that run's value,
    which is honest about how little one run says.
    """
    if not values:
        return None
    value = stat(values)
    rng = random.Random(seed)
    n = len(values)
    stats = sorted(stat([values[rng.randrange(n)] for _ in range(n)]) for _ in range(n_boot))
    tail = (1 - confidence) / 2
    low = stats[int(tail * (n_boot - 1))]
    high = stats[round((1 - tail) * (n_boot - 1))]
    return {"value": value, "low": min(low, value), "high": max(high, value)}


def summarize(rows: list[dict[str, Any]], keys: Sequence[str], n_boot: int = 2000,
              seed: int = 0) -> list[dict[str, Any]]:
    """One summary row per distinct ``keys`` of ``rows`` (each with a ``grade`` or None).

    Reports the mean grade and the fractions of runs graded >= 2 and >= 4, each with a bootstrap
    CI, as in the seed's agent table; runs that failed (grade None) are counted, not averaged.
    """
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in keys), []).append(row)
    out = []
    for group_key, members in sorted(groups.items(), key=lambda kv: [str(x) for x in kv[0]]):
        grades = [float(r["grade"]) for r in members if r.get("grade") is not None]
        out.append({
            **dict(zip(keys, group_key, strict=True)),
            "n": len(grades),
            "errors": len(members) - len(grades),
            "grade": bootstrap_ci(grades, n_boot=n_boot, seed=seed),
            "ge2": bootstrap_ci([float(g >= 2) for g in grades], n_boot=n_boot, seed=seed),
            "ge4": bootstrap_ci([float(g >= 4) for g in grades], n_boot=n_boot, seed=seed),
        })
    return out


def format_table(summary: list[dict[str, Any]], keys: Sequence[str]) -> str:
    """Plain-text table of :func:`summarize` rows."""
    def ci(x: dict[str, float] | None, pct: bool) -> str:
        if x is None:
            return "-"
        f = (lambda v: f"{100 * v:.0f}%") if pct else (lambda v: f"{v:.2f}")
        return f"{f(x['value'])} [{f(x['low'])}, {f(x['high'])}]"

    header = [*keys, "n", "err", "grade (95% CI)", "grade>=2", "grade>=4"]
    lines = [[str(r[k]) for k in keys] + [str(r["n"]), str(r["errors"]), ci(r["grade"], False),
                                          ci(r["ge2"], True), ci(r["ge4"], True)]
             for r in summary]
    widths = [max(len(h), *(len(row[i]) for row in lines)) if lines else len(h)
              for i, h in enumerate(header)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*header), *(fmt.format(*row) for row in lines)])
