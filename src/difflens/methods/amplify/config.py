"""Amplification configuration: the logit-amplification run and the LoRA weight scaling."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from difflens import pair_options
from difflens.options import meta, option, validate

DTYPES = pair_options.MODEL_DTYPES
#: Neutral chat prompts shipped with difflens (data/assets/chat_prompts.jsonl).
SHIPPED_PROMPTS = 40
GPU_BATCH_SIZE = 128
CPU_BATCH_SIZE = 32


def _check_alpha(value: Any) -> None:
    from difflens.models.amplify import check_alpha

    check_alpha(value)


def _check_factor(value: Any) -> None:
    import math

    if not math.isfinite(float(value)):
        from difflens.errors import DifflensError

        raise DifflensError(f"--scale must be a finite number, got {value!r} (e.g. --scale 2)")


@dataclass
class AmplifyConfig(pair_options.RunConfig):
    """Everything that determines an amplification run's results (hashed to name its run dir).

    The fields are also the ``difflens amplify`` flags (:mod:`difflens.options`)."""

    base: str | None = pair_options.base_model()
    finetuned: str | None = pair_options.finetuned_model()
    alphas: list[float] = field(default_factory=lambda: [0.0, 1.0, 2.0, 4.0], metadata=meta(
        type=float, nargs="+", min=-1, max=100, check=_check_alpha, example="0 1 2 4",
        help="strengths α sampled from softmax(z_ft + α(z_ft − z_base)); 0 = the plain "
             "finetune (the baseline rate), −1 = the base (default 0 1 2 4)"))
    prompts: int = option(20, min=1, max=SHIPPED_PROMPTS,
                          help=f"neutral chat prompts (of the {SHIPPED_PROMPTS} shipped; "
                               "default 20)")
    samples_per_prompt: int = option(2, min=1, help="samples per prompt and α (default 2)")
    max_new_tokens: int = option(48, min=1, help="tokens per sample (default 48)")
    temperature: float = option(0.7, min=0, min_open=True,
                                help="temperature, applied after amplification (default 0.7)")
    top_p: float = option(0.9, min=0, max=1, min_open=True,
                          help="nucleus mass, applied after amplification (default 0.9)")
    top_k: int = option(100, min=0, help="candidates before top-p (0 = all; default 100)")
    seed: int = option(0, help="base of every row's random stream")
    search: bool = option(True, flag="--no-search",
                          help="skip the search for the largest coherent α")
    alpha_max: float = option(8.0, min=0, min_open=True, max=100,
                              help="upper end of the coherent-α search (default 8)")
    tolerance: float = option(0.25, min=0, min_open=True,
                              help="stop the search once its bracket is this narrow (0.25)")
    coherent_fraction: float = option(0.75, min=0, max=1,
                                      help="share of coherent samples for α to pass (0.75)")
    search_prompts: int = option(8, min=1, help="prompts the search samples per α (default 8)")
    lookahead: int = option(2, min=1, max=4, help="search decisions per batched round (2)")
    ft_docs: str | None = option(
        None, path="file", help="finetune documents the offline rate compares samples with "
                                "(default: the organism's documents.jsonl)")
    description: str | None = option(
        None, help="what the finetune does, for the LLM rate grader (default: the organism "
                   "card's)")
    quantile: float = option(0.95, min=0, max=1, min_open=True, max_open=True,
                             help="offline rate: a sample shows the finetune's domain when it "
                                  "is closer to the finetune documents than this quantile of "
                                  "reference texts are (default 0.95)")
    n_boot: int = option(1000, min=1, help="bootstrap resamples per interval (default 1000)")
    batch_size: int | None = option(None, min=1, example=32,
                                    help="rows per decode loop (default 128 on GPU, 32 on CPU)")
    device: str = pair_options.device()
    dtype: str = pair_options.model_dtype()
    llm_base_url: str | None = option(None, cli=False, help="OpenAI-compatible grader endpoint")
    llm_model: str | None = option(None, cli=False, help="grader model name at that endpoint")
    llm_api_key_env: str = option("OPENAI_API_KEY", cli=False,
                                  help="environment variable holding the grader's API key")

    def identity(self) -> dict[str, Any]:
        """What names and reuses the run directory: every field but the batch size, which
        changes nothing in the results (rows are independent of their batch)."""
        out = self.to_dict()
        out.pop("batch_size")
        return out

    def validate(self) -> None:
        """One-line errors for values that cannot work, before anything is loaded or written."""
        validate(self)
        if self.search_prompts > self.prompts:
            from difflens.errors import DifflensError

            raise DifflensError(f"search_prompts ({self.search_prompts}) is more than prompts "
                                f"({self.prompts}); pass --search-prompts {self.prompts} or less")

    def sampling(self) -> Any:
        from difflens.models.generation import SamplingConfig

        return SamplingConfig(max_new_tokens=self.max_new_tokens, temperature=self.temperature,
                              top_p=self.top_p, top_k=self.top_k, seed=self.seed)


def resolve_defaults(config: AmplifyConfig, gpu: bool) -> AmplifyConfig:
    """``config`` with the device-dependent batch size filled in."""
    return replace(config, batch_size=config.batch_size or (GPU_BATCH_SIZE if gpu
                                                            else CPU_BATCH_SIZE))


@dataclass(frozen=True)
class LoraScaleConfig:
    """LoRA weight amplification flags (``difflens amplify --export DIR``)."""

    export: str | None = option(None, path="out_dir", metavar="DIR",
                                help="write the finetune's LoRA adapter, scaled by --scale / "
                                     "--scale-layers / --scale-modules, to DIR as a normal PEFT "
                                     "adapter (no generation is run)")
    scale: float = option(1.0, check=_check_factor,
                          help="factor of every LoRA update (negative reverses it)")
    scale_layers: str | None = option(
        None, metavar="RANGES", example="0-8:1.5,9-17:3",
        help="extra factor per inclusive layer range, e.g. 0-8:1.5,9-17:3")
    scale_modules: str | None = option(
        None, metavar="KINDS", example="o_proj:0,down_proj:2",
        help="extra factor per module kind, e.g. o_proj:0,down_proj:2")

    def given(self) -> bool:
        return self.scale != 1.0 or bool(self.scale_layers) or bool(self.scale_modules)
