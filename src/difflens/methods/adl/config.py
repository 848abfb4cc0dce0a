"""ADL configuration: one dataclass whose fields are also the ``difflens adl`` flags.

Each field carries its help, default, range and kind (:mod:`difflens.options`); the flags are
generated from it and :meth:`ADLConfig.validate` checks a config from the CLI or from Python
before any model loads.  Defaults derived at run time are resolved by :func:`resolve_defaults`
(the one place that knows them).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from difflens import pair_options
from difflens.options import LAYER, meta, option

# The readout layer is chosen per run from the data (layer_choice.py); it was a fixed depth per
# model family (0.75 for Gemma 3) until defaults version 4.
# 2: the CPU steering search uses 8 prompts (was 4); 3: final steered samples are confirmed
# coherent (back-off) and GPUs look 3 decisions ahead; 4: every layer collected, the readout
# layer chosen from the data, base-model steering samples for similarity.
DEFAULTS_VERSION = 4
STAGES = ("patchscope", "steering", "relevance", "similarity", "causal", "report")
LLM_STAGES = STAGES[:3]  # the stages that grade with the LLM when an endpoint is configured
LLM_FIELDS = ("llm_base_url", "llm_model", "llm_api_key_env")
DTYPES = pair_options.MODEL_DTYPES


@dataclass
class ADLConfig(pair_options.RunConfig):
    """Everything that determines an ADL run's results (hashed to name/reuse its run dir)."""

    base: str | None = pair_options.base_model()
    finetuned: str | None = pair_options.finetuned_model()
    corpus: str = pair_options.corpus("unrelated text")
    n_texts: int | None = option(None, min=1, example=2000,
                                 help="texts to read (default 10,000 on GPU, 2,000 on CPU)")
    k: int = option(5, min=1, help="first positions read per text (default 5)")
    layers: list[float | int] = field(default_factory=list, metadata=meta(
        type=LAYER, nargs="*", help="layers to check are in range (every layer is read "
                                    "anyway)"))
    layer: float | int | None = option(
        None, type=LAYER, help="readout layer: index or relative depth (default: chosen from "
                               "the data, where ‖δ̄‖/ν_ft peaks below the last layer)")
    batch_size: int = option(
        256, min=1, help="texts per forward")  # k tokens each: large batches amortise dispatch
    top: int = option(100, min=1, cli=False, help="tokens kept per readout (20 shown)")
    device: str = pair_options.device()
    dtype: str = pair_options.model_dtype()
    seed: int = option(0, cli=False, help="seed of sampling and baselines")
    ft_docs: str | None = option(
        None, path="file", help="finetune documents for similarity / causal / relevance "
                                "baseline (default: the organism's documents.jsonl)")
    description: str | None = option(
        None, help="what the finetune is about, for token relevance (default: the card's)")
    # The grader endpoint (flags shared with other commands: difflens.commands.add_llm_args).
    llm_base_url: str | None = option(None, cli=False, help="OpenAI-compatible grader endpoint")
    llm_model: str | None = option(None, cli=False, help="grader model name at that endpoint")
    llm_api_key_env: str = option("OPENAI_API_KEY", cli=False,
                                  help="NAME of the env variable holding the key")
    final_prompts: int = option(
        20, min=1, help="neutral chat prompts for steered / unsteered samples (default 20)")
    max_new_tokens: int | None = option(
        None, min=1, example=32, help="tokens per generated sample (default 32 on CPU, 64 on "
                                      "GPU)")
    causal_texts: int | None = option(
        None, min=1, example=16, help="texts per dataset in the causal test (default 16 on CPU, "
                                      "128 on GPU)")
    causal_tokens: int | None = option(
        None, min=2, example=32, help="tokens per text in the causal test (default 32 on CPU, "
                                      "64 on GPU)")
    n_random: int = option(16, min=1, help="random baselines of each kind in the causal test "
                                           "(default 16)")
    skip: list[str] = field(default_factory=list, metadata=meta(
        nargs="*", choices=STAGES,
        help="stages to skip: patchscope steering relevance similarity causal report"))
    # Bumped whenever a default derived at run time changes (e.g. the CPU steering search), so
    # run directories made under older defaults are not reused as if they were current.
    defaults_version: int = field(default=DEFAULTS_VERSION)

    def uses_llm(self) -> bool:
        """An endpoint is configured and some enabled stage grades with it."""
        return bool(self.llm_base_url) and bool(set(LLM_STAGES) - set(self.skip))

    def identity(self) -> dict[str, Any]:
        """What names and reuses the run directory: every field, except that the grader
        endpoint counts only when an enabled stage uses it (its fields are then left at their
        defaults, so fixing an unused URL does not make the run "different")."""
        data = self.to_dict()
        if not self.uses_llm():
            data.update({name: ADLConfig.__dataclass_fields__[name].default
                         for name in LLM_FIELDS})
        return data


def resolve_defaults(config: ADLConfig, gpu: bool) -> ADLConfig:
    """``config`` with the device-dependent defaults (``None`` fields) filled in.

    The run's identity stays that of ``config`` (defaults unresolved), so a run made on a CPU
    is not confused with one whose sizes were given explicitly."""
    return replace(
        config,
        n_texts=config.n_texts or (10_000 if gpu else 2_000),
        # Generation through a 262k-token head dominates ADL on CPU: 32 new tokens (~25 words)
        # are enough to judge coherence and to embed; GPUs get 64.
        max_new_tokens=config.max_new_tokens or (64 if gpu else 32),
        # Every direction needs its own full forward with the LM head (33 per batch): on CPU
        # the causal test is kept to 16 texts × 32 tokens per dataset (~1,000 predicted tokens,
        # enough to separate δ̄ from unit random directions), on GPU 128 × 64.
        causal_texts=config.causal_texts or (128 if gpu else 16),
        causal_tokens=config.causal_tokens or (64 if gpu else 32),
    )
