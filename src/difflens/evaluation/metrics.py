"""Method-level metrics of one organism, read from finished ADL / Diff Mining run directories.

Nothing is recomputed here: token relevance, steering similarity and the causal effect are
whatever ``difflens adl`` / ``difflens mine`` stored (missing stages are simply absent).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from difflens.io.artifacts import read_optional_json
from difflens.methods.adl.result import ADLResult
from difflens.methods.mining.result import RELEVANCE_FILE


def adl_metrics(run_dir: Path | str) -> dict[str, Any]:
    """Token relevance per readout, steering similarity and causal ΔCE of an ADL run."""
    run = ADLResult(run_dir)  # the stage files only: an unfinished run gives what it has
    out: dict[str, Any] = {}
    relevance = run.relevance
    if relevance is not None and relevance.readouts:
        out["token_relevance"] = {name: r.fraction for name, r in relevance.readouts.items()}
    sim = run.similarity
    if sim is not None and sim.steered_finetune is not None:
        unsteered = sim.unsteered_finetune
        out["steering_similarity"] = {
            "steered_finetune": sim.steered_finetune.mean,
            "unsteered_finetune": unsteered.mean if unsteered is not None else None,
            "p_value": sim.p_value,
        }
    effects = {ds: effect.delta_ce for ds, effect in (run.causal or {}).items()}
    if effects:
        out["causal_delta_ce"] = effects
    return out


def mining_metrics(run_dir: Path | str) -> dict[str, Any]:
    """Token relevance of a Diff Mining run (when it was graded)."""
    relevance = read_optional_json(Path(run_dir) / RELEVANCE_FILE) or {}
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
