"""Method-level metrics of one organism, read from finished ADL / Diff Mining run directories.

Nothing is recomputed here: token relevance, steering similarity and the causal effect are
whatever ``difflens adl`` / ``difflens mine`` stored (missing stages are simply absent).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from difflens.io.artifacts import read_optional_json


def adl_metrics(run_dir: Path | str) -> dict[str, Any]:
    """Token relevance per readout, steering similarity and causal ΔCE of an ADL run."""
    run = Path(run_dir)
    out: dict[str, Any] = {}
    relevance = read_optional_json(run / "relevance.json") or {}
    if relevance.get("readouts"):
        out["token_relevance"] = {name: r.get("fraction")
                                  for name, r in relevance["readouts"].items()}
    sim = read_optional_json(run / "similarity.json") or {}
    if "steered_finetune" in sim:
        out["steering_similarity"] = {
            "steered_finetune": sim["steered_finetune"].get("mean"),
            "unsteered_finetune": (sim.get("unsteered_finetune") or {}).get("mean"),
            "p_value": sim.get("p_value"),
        }
    causal = read_optional_json(run / "causal.json") or {}
    effects = {ds: causal[ds].get("delta_ce") for ds in ("finetune", "reference")
               if isinstance(causal.get(ds), dict)}
    if effects:
        out["causal_delta_ce"] = effects
    return out


def mining_metrics(run_dir: Path | str) -> dict[str, Any]:
    """Token relevance of a Diff Mining run (when it was graded)."""
    relevance = read_optional_json(Path(run_dir) / "relevance.json") or {}
    if "fraction" in relevance:
        return {"token_relevance": relevance["fraction"]}
    found = {k: v["fraction"] for k, v in relevance.items()
             if isinstance(v, dict) and "fraction" in v}
    return {"token_relevance": found} if found else {}


def organism_metrics(runs_root: Path | str | None, organism: str) -> dict[str, Any]:
    """``{"adl": {...}, "mining": {...}}`` for ``<runs_root>/<organism>/{adl,mining}``."""
    if runs_root is None:
        return {}
    base = Path(runs_root) / organism
    out = {}
    if (base / "adl").is_dir():
        out["adl"] = adl_metrics(base / "adl")
    if (base / "mining").is_dir():
        out["mining"] = mining_metrics(base / "mining")
    return out
