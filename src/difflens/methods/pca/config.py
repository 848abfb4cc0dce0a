"""PCA configuration: one dataclass whose fields are also the ``difflens pca`` flags."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from difflens import pair_options
from difflens.errors import DifflensError
from difflens.options import LAYER, meta, option, validate

STAGES = ("patchscope", "contexts", "steering", "report")
LLM_FIELDS = ("llm_base_url", "llm_model", "llm_api_key_env")
DTYPES = pair_options.MODEL_DTYPES
MAX_CONTEXTS = 1000  # top contexts kept per component and sign (bounded store)

# Texts read when ``n_texts`` is not given.  Every position of every text is a row of the
# covariance, so 256 texts × 64 tokens give ~16k rows on a CPU (25× d = 640 for gemma-3-270m;
# two passes of both models over them take ~2 min on 2 cores); a GPU reads 8,192 texts.
GPU_DEFAULT_TEXTS = 8192
CPU_DEFAULT_TEXTS = 256
GPU_BATCH_SIZE = 32
CPU_BATCH_SIZE = 8


@dataclass
class PCAConfig(pair_options.RunConfig):
    """Everything that determines a PCA run's results (hashed to name / reuse its run dir)."""

    base: str | None = pair_options.base_model()
    finetuned: str | None = pair_options.finetuned_model()
    corpus: str = pair_options.corpus("unrelated text")
    n_texts: int | None = option(None, min=1, example=256,
                                 help="texts to read (default 8,192 on GPU, 256 on CPU)")
    max_tokens: int = option(64, min=2, help="tokens per text, BOS included (default 64)")
    layers: list[float | int] = field(default_factory=list, metadata=meta(
        type=LAYER, nargs="*", help="layers to analyse: indices or relative depths (default: "
                                    "ADL's readout layer, chosen from a first-k-token pass)"))
    k: int = option(5, min=2, help="first tokens per text for ADL's δ̄ (compared with the "
                                   "components) and the layer choice (default 5)")
    components: int = option(10, min=1, help="principal components computed and saved "
                                             "(default 10; at most the hidden size)")
    readout: int = option(3, min=1, help="top components read out: logit lens, Patchscope, "
                                         "contexts (default 3; at most --components)")
    contexts: int = option(10, min=1, max=MAX_CONTEXTS, metavar="N",
                           help=f"top-activating contexts kept per component and sign "
                                f"(default 10, at most {MAX_CONTEXTS})")
    window: int = option(12, min=0, max=64, cli=False,
                         help="context tokens kept on each side of a top position")
    steer: int = option(1, min=0, help="top components steered along (default 1: PC1; "
                                       "0 = none)")
    top: int = option(100, min=1, cli=False, help="tokens kept per readout (20 shown)")
    batch_size: int | None = option(None, min=1, example=8,
                                    help="texts per forward (default 32 on GPU, 8 on CPU)")
    final_prompts: int = option(
        20, min=1, help="neutral chat prompts for steered / unsteered samples (default 20)")
    max_new_tokens: int | None = option(
        None, min=1, example=32, help="tokens per generated sample (default 32 on CPU, 64 on "
                                      "GPU)")
    device: str = pair_options.device()
    dtype: str = pair_options.model_dtype()
    seed: int = option(0, cli=False, help="seed of sampling")
    # The grader endpoint (flags shared with other commands: cli_args.add_llm_args).
    llm_base_url: str | None = option(None, cli=False, help="OpenAI-compatible grader endpoint")
    llm_model: str | None = option(None, cli=False, help="grader model name at that endpoint")
    llm_api_key_env: str = option("OPENAI_API_KEY", cli=False,
                                  help="NAME of the env variable holding the key")
    skip: list[str] = field(default_factory=list, metadata=meta(
        nargs="*", choices=STAGES, help="stages to skip: " + " ".join(STAGES)))

    def validate(self) -> None:
        """One-line errors for values that cannot work, before anything loads."""
        validate(self)
        if self.readout > self.components:
            raise DifflensError(f"readout ({self.readout}) cannot exceed components "
                                f"({self.components}); use --readout {self.components} or "
                                f"--components {self.readout}")
        if self.steer > self.components:
            raise DifflensError(f"steer ({self.steer}) cannot exceed components "
                                f"({self.components}); use --steer 1")
        if self.k > self.max_tokens:
            raise DifflensError(f"k ({self.k}) cannot exceed max_tokens ({self.max_tokens}); "
                                f"use --max-tokens {max(64, self.k)}")

    def uses_grader(self) -> bool:
        """A stage that grades runs: Patchscope (scale choice) or steering (coherence)."""
        return "patchscope" not in self.skip or ("steering" not in self.skip and self.steer > 0)

    def identity(self) -> dict[str, Any]:
        """What names and reuses the run directory: every field, the grader endpoint only when
        a stage that grades runs (as ADL's)."""
        data = self.to_dict()
        if not (self.llm_base_url and self.uses_grader()):
            data.update({name: PCAConfig.__dataclass_fields__[name].default
                         for name in LLM_FIELDS})
        return data


def check_components(config: PCAConfig, d: int) -> None:
    """``components`` against the model's hidden size ``d`` (known once the pair is loaded)."""
    if config.components > d:
        raise DifflensError(f"components ({config.components}) exceeds the hidden size of this "
                            f"model (d = {d}); use --components {min(10, d)} or fewer")


def resolve_defaults(config: PCAConfig, gpu: bool) -> PCAConfig:
    """``config`` with the device-dependent defaults (``None`` fields) filled in."""
    return replace(
        config,
        n_texts=config.n_texts or (GPU_DEFAULT_TEXTS if gpu else CPU_DEFAULT_TEXTS),
        batch_size=config.batch_size or (GPU_BATCH_SIZE if gpu else CPU_BATCH_SIZE),
        max_new_tokens=config.max_new_tokens or (64 if gpu else 32),
    )
