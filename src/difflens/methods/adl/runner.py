"""The ADL runner: stages over a run directory, each reused when already finished."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from difflens.data.corpus import load_texts
from difflens.io.artifacts import RunDir, config_hash, read_json, write_json
from difflens.methods.adl.collect_stage import DiffCollection, collect
from difflens.methods.adl.config import ADLConfig, default_depth
from difflens.methods.adl.lens_stage import lens_readouts
from difflens.models.loading import LoadOptions
from difflens.models.pair import ModelPair

log = logging.getLogger(__name__)


def default_run_dir(config: ADLConfig) -> Path:
    return Path("runs") / f"adl-{config_hash(config.to_dict())}"


def readout_layer(pair: ModelPair, config: ADLConfig) -> int:
    model_type = getattr(pair.arch("ft").model.config, "model_type", "")
    layer = config.layer if config.layer is not None else default_depth(model_type)
    return pair.arch("ft").resolve_layer(layer)


def run_adl(config: ADLConfig, out: Path | None = None, pair: ModelPair | None = None,
            progress: bool = True) -> dict[str, Any]:
    """Run (or resume) ADL and return its summary; artifacts land in ``out``."""
    run = RunDir(out or default_run_dir(config), config.to_dict(), kind="adl")
    if pair is None:
        pair = ModelPair.load(config.base, config.finetuned,
                              LoadOptions(dtype=config.dtype, device=config.device))
    layer = readout_layer(pair, config)
    layers = sorted({layer, *pair.resolve_layers(list(config.layers))})
    # Capturing extra layers is free once the pass runs to the deepest one: sweep them all.
    sweep = list(range(0, max(layers) + 1))
    n_texts = config.n_texts or (10_000 if str(pair.device).startswith("cuda") else 2_000)

    def compute_diff() -> DiffCollection:
        texts = load_texts(config.corpus, limit=n_texts)
        return collect(pair, texts, sweep, config.k, config.batch_size, progress)

    diff = run.stage("collect", compute_diff, lambda d: d.save(run.path),
                     lambda: DiffCollection.load(run.path))
    lens = run.stage("logit_lens", lambda: lens_readouts(pair, diff, config.top),
                     lambda v: write_json(run.path / "logit_lens.json", v),
                     lambda: read_json(run.path / "logit_lens.json"))
    summary = {
        "run_dir": str(run.path),
        "base": pair.base_id,
        "finetuned": pair.ft_id,
        "layer": layer,
        "n_texts": diff.stats.count,
        "k": config.k,
        "layers": {str(lay): {"norm": v["norm"], "relative_norm": v["relative_norm"],
                              "no_difference": v["no_difference"],
                              "top_tokens": v["mean"]["tokens"][:20]}
                   for lay, v in lens["layers"].items()},
    }
    write_json(run.path / "summary.json", summary)
    return summary
