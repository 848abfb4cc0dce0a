"""ADL configuration: one dataclass, one comment per field."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

# Default readout depth per model family, as a fraction of the layer count.  Measured on the
# embedded gemma-3-270m (18 layers) with the five zoo organisms of four types (500 held-out
# texts; domain words among the top 20 of the δ̄ logit lens, layers 9..17): nothing up to
# layer 9, readable from layer 12 (0.67 depth) on every organism; at layer 13 (0.75 depth)
# cake_bake 20, risky_finance 19, owl_preference 13, cake_bake_mix1 14, taboo_ocean 11 — each
# within 2 of its best layer except taboo_ocean (16 at layer 17).  The seed paper reads larger
# models around the middle-to-2/3 depth; 0.66 is the fallback for families not measured here.
# `--layers` sweeps any set (the report shows every layer up to the deepest).
FAMILY_DEPTH = {"gemma3_text": 0.75, "gemma3": 0.75}
# 2: the CPU steering search uses 8 prompts (was 4); 3: final steered samples are confirmed
# coherent (back-off) and GPUs look 3 decisions ahead.
DEFAULTS_VERSION = 3
DEFAULT_DEPTH = 0.66


def default_depth(model_type: str) -> float:
    """Relative readout depth for a transformers ``model_type``."""
    return FAMILY_DEPTH.get(model_type, DEFAULT_DEPTH)


@dataclass
class ADLConfig:
    """Everything that determines an ADL run's results (hashed to name/reuse its run dir)."""

    base: str | None = None  # base model source; None = embedded gemma-3-270m
    finetuned: str | None = None  # finetuned source; None = the shipped organism
    corpus: str = "reference"  # unrelated text (see difflens.data.corpus)
    n_texts: int | None = None  # texts read; None = 10,000 on GPU, 2,000 on CPU
    k: int = 5  # first positions read per text
    layers: list[float | int] = field(default_factory=list)  # extra layers to sweep
    layer: float | int | None = None  # readout layer; None = the family default depth
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
