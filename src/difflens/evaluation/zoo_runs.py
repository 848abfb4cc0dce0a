"""Run ADL and Diff Mining on every built organism of the zoo (resuming finished runs).

``<runs_root>/<organism>/adl`` and ``.../mining`` are ordinary run directories: the same
arguments reuse them, so an interrupted evaluation resumes where it stopped, and they are what
the agents of ``difflens eval`` read.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from difflens.organisms.registry import OrganismEntry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ZooRunConfig:
    """Which method runs to make per organism (ADL / Diff Mining config fields as overrides)."""

    runs_root: str
    adl: dict[str, Any] = field(default_factory=dict)  # ADLConfig fields, e.g. {"n_texts": 1000}
    mining: dict[str, Any] | None = field(default_factory=dict)  # MiningConfig fields; None: skip
    llm: dict[str, Any] = field(default_factory=dict)  # llm_base_url/model/key env; {} = offline


def run_organism_methods(entry: OrganismEntry, config: ZooRunConfig,
                         progress: bool = True) -> dict[str, Any]:
    """ADL (and Diff Mining) of ``entry`` against its base; returns both summaries."""
    from difflens.methods.adl.config import ADLConfig
    from difflens.methods.adl.runner import run_adl
    from difflens.models.pair import ModelPair

    if not entry.built:
        raise ValueError(f"{entry.name} is not built")
    out = Path(config.runs_root) / entry.name
    pair = ModelPair.load(entry.base, entry.weights)
    sources = {"base": entry.base, "finetuned": entry.weights}
    log.info("ADL on %s", entry.name)
    summaries = {"adl": run_adl(ADLConfig(**{**sources, **config.adl, **config.llm}),
                                out / "adl", pair=pair, progress=progress)}
    if config.mining is not None:
        from difflens.graders import make_grader
        from difflens.methods.mining.runner import MiningConfig, run_mining

        grader = make_grader(_llm_config(config.llm))
        log.info("Diff Mining on %s", entry.name)
        summaries["mining"] = run_mining(MiningConfig(**{**sources, **config.mining}),
                                         out / "mining", pair=pair, progress=progress,
                                         grader=grader, description=entry.long_description)
    return summaries


def _llm_config(llm: dict[str, Any]) -> Any:
    if not llm.get("llm_base_url"):
        return None
    from difflens.llm import LLMConfig

    return LLMConfig(base_url=llm["llm_base_url"], model=llm.get("llm_model") or "gpt-5-mini",
                     api_key_env=llm.get("llm_api_key_env", "OPENAI_API_KEY"))


def run_zoo(registry: dict[str, OrganismEntry], names: list[str], config: ZooRunConfig,
            progress: bool = True) -> list[str]:
    """Method runs for every built organism in ``names``; returns notes on those skipped."""
    notes = []
    for name in names:
        entry = registry[name]
        if not entry.built:
            notes.append(f"{name}: not built (scripts/build_zoo.sh builds it); no method runs")
            continue
        run_organism_methods(entry, config, progress)
    return notes
