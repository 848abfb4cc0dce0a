"""What every model-pair method's config shares: the pair, corpus, device and dtype option
fields (one definition and one help text each) and the ``to_dict`` / ``identity`` /
``validate`` trio (:class:`RunConfig`).

A method's config is ``@dataclass class XConfig(RunConfig)`` whose fields use these factories
where they mean the same thing, and overrides ``identity`` / ``validate`` where its run has more
to say (ADL and PCA leave an unused grader endpoint out of the identity; amplification its
batch size).  Light on purpose: the checks it names import nothing heavy.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from difflens.data.corpus import check_corpus_source
from difflens.models.loading import DEVICE_HELP, check_device, check_model_source
from difflens.options import option, validate

#: dtypes the models of a pair can run in.
MODEL_DTYPES = ("float32", "bfloat16", "float16")

BASE_HELP = "base model source; None = embedded gemma-3-270m"
FINETUNED_HELP = "finetuned source; None = the shipped organism"
CORPUS_FORMATS = "'reference' (shipped), .txt/.jsonl/.parquet, hf:NAME"


def base_model(help: str = BASE_HELP) -> Any:
    """``base``: a model source (hub id, directory, GGUF, organism) or None (embedded)."""
    return option(None, cli=False, check=check_model_source, help=help)


def finetuned_model(help: str = FINETUNED_HELP) -> Any:
    """``finetuned``: a model source, PEFT adapter or organism, or None (the shipped one)."""
    return option(None, cli=False, check=check_model_source, help=help)


def corpus(what: str = "unrelated text", formats: str = CORPUS_FORMATS) -> Any:
    """``corpus``: the text both models read, ``reference`` by default."""
    return option("reference", check=check_corpus_source, help=f"{what}: {formats}")


def device() -> Any:
    """``device``: cpu, cuda, cuda:N, auto (accelerate's device map)."""
    return option("cpu", cli=False, check=check_device, help=DEVICE_HELP)


def model_dtype() -> Any:
    """``dtype``: what the models run in."""
    return option("float32", cli=False, choices=MODEL_DTYPES, help="dtype the models run in")


class RunConfig:
    """The trio every method config has; a dataclass subclass inherits it."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    def identity(self) -> dict[str, Any]:
        """What names and reuses the run directory (every field unless overridden)."""
        return self.to_dict()

    def validate(self) -> None:
        """One-line errors for values that cannot work, before anything is loaded or written."""
        validate(self)
