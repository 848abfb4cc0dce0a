"""ADL configuration: one dataclass, one comment per field."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

# The readout layer is chosen per run from the data (layer_choice.py); it was a fixed depth per
# model family (0.75 for Gemma 3) until defaults version 4.
# 2: the CPU steering search uses 8 prompts (was 4); 3: final steered samples are confirmed
# coherent (back-off) and GPUs look 3 decisions ahead; 4: every layer collected, the readout
# layer chosen from the data, base-model steering samples for similarity.
DEFAULTS_VERSION = 4


@dataclass
class ADLConfig:
    """Everything that determines an ADL run's results (hashed to name/reuse its run dir)."""

    base: str | None = None  # base model source; None = embedded gemma-3-270m
    finetuned: str | None = None  # finetuned source; None = the shipped organism
    corpus: str = "reference"  # unrelated text (see difflens.data.corpus)
    n_texts: int | None = None  # texts read; None = 10,000 on GPU, 2,000 on CPU
    k: int = 5  # first positions read per text
    layers: list[float | int] = field(default_factory=list)  # checked only: every layer is read
    layer: float | int | None = None  # readout layer; None = chosen from the data
    batch_size: int = 256  # texts per forward (k tokens each: large batches amortise dispatch)
    top: int = 100  # tokens kept per readout (20 shown)
    device: str = "cpu"
    dtype: str = "float32"
    seed: int = 0
    ft_docs: str | None = None  # finetune documents (default: the organism's documents.jsonl)
    description: str | None = None  # finetune description (default: the organism card's)
    llm_base_url: str | None = None  # OpenAI-compatible grader endpoint; None = offline graders
    llm_model: str | None = None  # grader model name at that endpoint
    llm_api_key_env: str = "OPENAI_API_KEY"  # NAME of the env variable holding the key
    final_prompts: int = 20  # neutral chat prompts for steered / unsteered samples
    max_new_tokens: int | None = None  # tokens per generated sample (None: 32 CPU / 64 GPU)
    causal_texts: int | None = None  # texts per dataset in the causal test (None: 16 CPU/128 GPU)
    causal_tokens: int | None = None  # tokens per text in the causal test (None: 32 CPU/64 GPU)
    n_random: int = 16  # random baselines of each kind in the causal test
    skip: list[str] = field(default_factory=list)  # stages to skip (patchscope, steering, ...)
    # Bumped whenever a default derived at run time changes (e.g. the CPU steering search), so
    # run directories made under older defaults are not reused as if they were current.
    defaults_version: int = DEFAULTS_VERSION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
