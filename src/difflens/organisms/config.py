"""The ``difflens organism build`` configuration: one dataclass whose fields are also its flags.

Each field declares its help, range, choices and path kind (:mod:`difflens.options`); the CLI is
generated from it (:func:`difflens.organisms.cli.add_parser`) and :meth:`BuildConfig.validate`
checks a config from the CLI or from Python before the base model loads.  Light (no torch), so
that ``difflens --help`` can build the parser.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path

from difflens.data.corpus import check_corpus_source
from difflens.errors import DifflensError
from difflens.models.loading import check_device, check_model_source
from difflens.options import meta, option, validate

DEFAULT_LR = {"lora": 3e-4, "full": 2e-5}  # full finetunes move every weight: much smaller lr
SAVE_DTYPES = ("float16", "bfloat16", "float32")
METHODS = ("lora", "full")
#: Checks that look at the file system or the machine: run by :meth:`BuildConfig.validate`,
#: not on construction (a config may describe a build to run elsewhere).
ENVIRONMENT_FIELDS = ("documents", "out", "base", "mix_corpus", "device")


def module_list(text: str) -> list[str]:
    """``"q_proj, v_proj"`` -> ``["q_proj", "v_proj"]`` (the ``--target-modules`` value)."""
    return [name.strip() for name in text.split(",") if name.strip()]


def _check_modules(names: list[str]) -> None:
    if not isinstance(names, list | tuple) or not names or not all(
            isinstance(name, str) and name for name in names):
        raise DifflensError(f"target_modules must name at least one module, got {names!r} "
                            "(e.g. --target-modules q_proj,v_proj)")


@dataclass
class BuildConfig:
    """Everything :func:`~difflens.organisms.builder.build_organism` needs; the fields are the
    ``difflens organism build`` flags."""

    documents: Path = field(metadata=meta(
        required=True, path="file", check=check_corpus_source, example="docs.jsonl",
        help="finetuning documents (.jsonl with a text field, or .txt); a <stem>.card.json "
             "beside it supplies name, type and descriptions"))
    out: Path = field(metadata=meta(required=True, path="out_dir",
                                    example="organisms/my_organism",
                                    help="organism directory to create"))
    base: str = option("embedded", check=check_model_source,
                       help="base model: embedded (google/gemma-3-270m), a directory or hub id")
    method: str = option("lora", flag="--full", const="full", choices=METHODS,
                         help="train every weight instead of a LoRA adapter")
    rank: int = option(8, min=1, help="LoRA rank")
    alpha: float | None = option(None, min=0, min_open=True, example=16,
                                 help="LoRA alpha (default: 2*rank)")
    dropout: float = option(0.0, min=0, max=1, max_open=True, help="LoRA dropout")
    target_modules: list[str] | None = field(default=None, metadata=meta(
        type=module_list, metavar="NAMES", check=_check_modules, example="q_proj,v_proj",
        help="comma-separated module names for LoRA (default: every linear projection of "
             "attention and MLP, the peft all-linear set, which leaves the LM head out)"))
    steps: int | None = option(None, min=1, example=100,
                               help="optimizer steps (default: from --epochs)")
    epochs: float = option(2.0, min=0, min_open=True,
                           help="passes over documents + mixed texts when --steps is not given")
    batch_size: int = option(8, min=1, help="sequences per step")
    lr: float | None = option(None, min=0, min_open=True, example=3e-4,
                              help="peak learning rate (default: 3e-4 LoRA, 2e-5 full)")
    warmup: float = option(0.1, min=0, max=1,
                           help="fraction of steps of linear warmup (then linear decay to 0)")
    weight_decay: float = option(0.0, min=0, help="AdamW weight decay")
    max_grad_norm: float = option(1.0, min=0, min_open=True, help="gradient clipping")
    max_length: int = option(256, min=2, help="tokens per document (longer ones are cut)")
    mix: float = option(0.0, min=0, metavar="R",
                        help="general texts mixed in per document (1 = one per document)")
    mix_corpus: str | None = option(
        None, check=check_corpus_source, metavar="CORPUS", example="reference",
        help="corpus of general texts (file or hf:NAME); default: the shipped reference corpus")
    seed: int = option(0, min=0, help="seed of init, mixing and batch order")
    name: str | None = option(None, help="organism name (default: from the documents card, "
                                          "else the documents file's stem)")
    type: str | None = option(None, help="organism type, e.g. false_fact")
    short_description: str | None = option(None, help="one sentence")
    long_description: str | None = option(None, help="a paragraph")
    save_dtype: str = option("float16", choices=SAVE_DTYPES,
                             help="dtype of saved weights (float16 keeps a rank-8 adapter a few "
                                  "MB; peft loads it back into an fp32 model as fp32)")
    device: str = option("cpu", check=check_device, help="training device (cpu, cuda, cuda:N, "
                                                          "mps)")
    overwrite: bool = option(False, help="replace an existing organism")
    skip_existing: bool = option(False, help="keep an existing complete organism and exit")
    progress: bool = option(True, flag="--no-progress", help="hide the progress bar")

    def __post_init__(self) -> None:
        self.documents = Path(self.documents)
        self.out = Path(self.out)
        # Values are checked at once; paths, models and devices by validate().
        validate(self, skip=ENVIRONMENT_FIELDS)

    def validate(self) -> None:
        """One-line errors for every value that cannot work, before the base model loads:
        the device (first: the machine decides whether anything can run), then ranges,
        choices, the documents file, the output directory, the base."""
        check_device(self.device)
        validate(self, skip=("device",))

    @property
    def resolved_lr(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.method]

    @property
    def resolved_alpha(self) -> float:
        return self.alpha if self.alpha is not None else 2.0 * self.rank

    def command(self) -> str:
        """The ``difflens organism build ...`` command line that reproduces this build."""
        args = ["--documents", str(self.documents), "--out", str(self.out), "--base", self.base]
        if self.method == "full":
            args.append("--full")
        else:
            args += ["--rank", str(self.rank), "--alpha", _num(self.resolved_alpha)]
            if self.dropout:
                args += ["--dropout", _num(self.dropout)]
            if self.target_modules:
                args += ["--target-modules", ",".join(self.target_modules)]
        args += ["--steps", str(self.steps)] if self.steps else ["--epochs", _num(self.epochs)]
        args += ["--batch-size", str(self.batch_size), "--lr", _num(self.resolved_lr),
                 "--warmup", _num(self.warmup), "--weight-decay", _num(self.weight_decay),
                 "--max-grad-norm", _num(self.max_grad_norm), "--max-length",
                 str(self.max_length), "--mix", _num(self.mix)]
        if self.mix_corpus:
            args += ["--mix-corpus", self.mix_corpus]
        args += ["--seed", str(self.seed), "--save-dtype", self.save_dtype]
        for flag, value in (("--name", self.name), ("--type", self.type),
                            ("--short-description", self.short_description),
                            ("--long-description", self.long_description)):
            if value:
                args += [flag, value]
        return "difflens organism build " + shlex.join(args)


def _num(value: float) -> str:
    """Shortest faithful text of a number (``2.0`` -> ``2``, ``0.0003`` -> ``0.0003``)."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))
