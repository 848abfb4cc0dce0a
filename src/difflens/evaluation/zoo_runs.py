"""Run the methods on every built organism of the zoo (resuming finished runs).

``<runs_root>/<organism>/adl``, ``.../mining``, ``.../kl``, ``.../pca`` and ``.../weights`` are
ordinary run directories: the same
arguments reuse them, so an interrupted evaluation resumes where it stopped, and they are what
the agents of ``difflens eval`` read.  A finished run is reused only when it was made with the
same configuration (defaults included); a run made with other settings stops the evaluation
with the run directory's one-line error rather than being read as if it were current.
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
    # Per-token KL, PCA and weight-space lens config fields as overrides; None: not run.
    kl: dict[str, Any] | None = None
    pca: dict[str, Any] | None = None
    weights: dict[str, Any] | None = None


def run_organism_methods(entry: OrganismEntry, config: ZooRunConfig,
                         progress: bool = True) -> dict[str, Any]:
    """ADL (and Diff Mining) of ``entry`` against its base; returns both summaries.

    Runs finished with exactly these configurations are read back without loading the models.
    """
    from difflens.io.artifacts import read_json
    from difflens.methods.adl.config import ADLConfig

    if not entry.built:
        raise ValueError(f"{entry.name} is not built")
    out = Path(config.runs_root) / entry.name
    # Device and dtype are run settings of both methods (part of their configs).
    device, dtype = config.adl.get("device", "cpu"), config.adl.get("dtype", "float32")
    sources = {"base": entry.base, "finetuned": entry.weights, "device": device, "dtype": dtype}
    configs: dict[str, Any] = {"adl": ADLConfig(**{**sources, **config.adl, **config.llm})}
    if config.mining is not None:
        from difflens.methods.mining.runner import MiningConfig

        configs["mining"] = MiningConfig(**{**sources, **config.mining})
    if config.kl is not None:
        from difflens.methods.kl.config import KLConfig

        configs["kl"] = KLConfig(**{**sources, **config.kl})
    if config.pca is not None:
        from difflens.methods.pca.config import PCAConfig

        configs["pca"] = PCAConfig(**{**sources, **config.pca})
    if config.weights is not None:
        from difflens.methods.weights.config import WeightsConfig

        no_dtype = {k: v for k, v in sources.items() if k != "dtype"}  # weights are read as stored
        configs["weights"] = WeightsConfig(**{**no_dtype, **config.weights})
    # A list, not a generator: every run directory is checked, so a stale one raises now.
    if all([_finished(out / name, cfg, name) for name, cfg in configs.items()]):
        return {name: read_json(out / name / "summary.json") for name in configs}

    from difflens.api import run_adl
    from difflens.models.loading import LoadOptions
    from difflens.models.pair import ModelPair

    pair = ModelPair.load(entry.base, entry.weights, LoadOptions(dtype=dtype, device=device))
    log.info("ADL on %s", entry.name)
    summaries = {"adl": run_adl(configs["adl"], out / "adl", pair=pair, progress=progress)}
    summaries.update(_other_methods(configs, out, pair, progress, entry.name))
    if "mining" in configs:
        from difflens.graders import make_grader
        from difflens.llm import llm_config_from_fields
        from difflens.methods.mining.runner import run_mining

        grader = make_grader(llm_config_from_fields(config.llm))
        log.info("Diff Mining on %s", entry.name)
        summaries["mining"] = run_mining(configs["mining"], out / "mining", pair=pair,
                                         progress=progress, grader=grader,
                                         description=entry.long_description)
    return summaries


def _other_methods(configs: dict[str, Any], out: Path, pair: Any, progress: bool,
                   name: str) -> dict[str, Any]:
    """Per-token KL, PCA and the weight-space lens of one organism (those configured)."""
    from difflens import api

    summaries: dict[str, Any] = {}
    if "kl" in configs:
        log.info("per-token KL on %s", name)
        summaries["kl"] = api.run_kl(configs["kl"], out / "kl", pair=pair, progress=progress)
    if "pca" in configs:
        log.info("PCA on %s", name)
        summaries["pca"] = api.run_pca(configs["pca"], out / "pca", pair=pair, progress=progress)
    if "weights" in configs:
        log.info("weight-space lens on %s", name)
        summaries["weights"] = api.run_weights(configs["weights"], out / "weights",
                                               progress=progress)
    return summaries


def _finished(run_dir: Path, config: Any, kind: str) -> bool:
    """``run_dir`` holds a finished run (a summary) made with exactly ``config``, or assembled
    by hand (a summary without ``run.json``, read as it is).  A run made with other settings
    raises its one-line error (:func:`~difflens.io.artifacts.same_run`) before any model is
    loaded."""
    from difflens.io.artifacts import same_run

    identity = config.identity() if hasattr(config, "identity") else config.to_dict()
    same_run(run_dir, identity, kind)  # False only when there is no run.json
    return (run_dir / "summary.json").is_file()


HELD_OUT_STEM = "reference_held_out"


def held_out_corpus(registry: dict[str, OrganismEntry], runs_root: Path | str) -> str:
    """The shipped reference corpus minus every text an organism was trained on.

    Mixed organisms are trained on general texts drawn from the reference corpus (their
    ``mix_texts.jsonl``); reading δ̄ on those very texts would measure memorisation, not the
    finetune's trace, and flatter the mixing ablation.  Returns ``"reference"`` when no
    organism mixed anything in, else the path of the held-out copy written under
    ``runs_root`` (same texts, same order, trained-on ones removed; named by its content hash).
    """
    from difflens.data.corpus import load_texts
    from difflens.io.artifacts import atomic_write_bytes
    from difflens.organisms.documents import mixed_in_texts

    trained = set().union(*(mixed_in_texts(e.weights) for e in registry.values()))
    if not trained:
        return "reference"
    import hashlib
    import json

    kept = [t for t in load_texts("reference") if t not in trained]
    data = "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in kept)
    # Named by content: runs (keyed by their config, this path included) never mix corpora.
    digest = hashlib.sha256(data.encode("utf-8")).hexdigest()[:12]
    path = Path(runs_root) / f"{HELD_OUT_STEM}-{digest}.jsonl"
    if not path.is_file():
        atomic_write_bytes(path, data.encode("utf-8"))
    return str(path)


def run_zoo(registry: dict[str, OrganismEntry], names: list[str], config: ZooRunConfig,
            progress: bool = True) -> list[str]:
    """Method runs for every built organism in ``names``; returns notes on those skipped.

    Unless the ADL / Diff Mining overrides name a corpus, both read the held-out reference
    corpus (:func:`held_out_corpus`), the same for every organism.
    """
    notes = []
    corpus = None
    for name in names:
        entry = registry[name]
        if not entry.built:
            notes.append(f"{name}: not built (scripts/build_zoo.sh builds it); no method runs")
            continue
        if corpus is None:
            corpus = held_out_corpus(registry, config.runs_root)
        adl = {"corpus": corpus, **config.adl}
        mining = None if config.mining is None else {"corpus": corpus, **config.mining}
        kl = None if config.kl is None else {"corpus": corpus, **config.kl}
        pca = None if config.pca is None else {"corpus": corpus, **config.pca}
        run_organism_methods(entry, ZooRunConfig(config.runs_root, adl, mining, config.llm, kl,
                                                 pca, config.weights), progress)
    return notes
