"""Weight-space lens configuration: one dataclass, one comment per field."""

from __future__ import annotations

from dataclasses import dataclass

from difflens import pair_options
from difflens.options import option

#: How modules are ranked (and what the heat map shows): ‖ΔW‖_F, or ‖ΔW‖_F / ‖W_base‖_F.
RANK_BY = ("norm", "relative")


@dataclass
class WeightsConfig(pair_options.RunConfig):
    """Everything that determines a weight-space lens run (hashed to name its run dir).

    The fields are also the ``difflens weights`` flags (:mod:`difflens.options`)."""

    base: str | None = pair_options.base_model(
        "base model source; None = the adapter's / organism's recorded base, else embedded "
        "gemma-3-270m")
    finetuned: str | None = pair_options.finetuned_model(
        "finetuned source: PEFT adapter dir, organism dir or name, model dir; None = the "
        "shipped organism")
    top_singular: int = option(8, min=1, help="singular values kept per module (default 8)")
    n_vectors: int = option(3, min=1, help="top singular vectors read out per module "
                                           "(default 3)")
    readout_modules: int = option(12, min=0, help="top-ranked modules whose singular vectors "
                                                  "are read out (default 12; 0: none)")
    top_tokens: int = option(20, min=1, help="tokens per readout (default 20)")
    rank_by: str = option("norm", choices=RANK_BY,
                          help="rank modules by ‖ΔW‖_F (norm, default) or ‖ΔW‖_F/‖W_base‖_F "
                               "(relative)")
    device: str = pair_options.device()
