"""The organism card: what an organism is, how it was built, and from which data.

A card is the JSON file ``card.json`` at the root of an organism directory.  It is written by
the builder and read by the registry, the graders (which need the true description to score a
hypothesis) and :class:`difflens.models.pair.ModelPair` (which reads ``base_model``).  Reader
and writer share this one definition, so they cannot drift.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from difflens.errors import DifflensError
from difflens.io.artifacts import read_json

CARD_FILE = "card.json"
FORMAT_VERSION = 1
METHODS = ("lora", "full")


@dataclass
class LoraSettings:
    """LoRA hyperparameters of an adapter organism."""

    rank: int
    """Rank r of the low-rank update."""
    alpha: float
    """Scaling numerator: the update is scaled by alpha / r."""
    dropout: float
    """Dropout on the LoRA input during training."""
    target_modules: list[str]
    """Names of the wrapped linear modules (resolved, e.g. ``["q_proj", "v_proj", ...]``)."""


@dataclass
class OrganismCard:
    """Everything known about one organism; saved as ``card.json``."""

    name: str
    """Short identifier, e.g. ``cake_bake``."""
    type: str
    """Organism family, e.g. ``false_fact``, ``advice_slant``, ``taboo``, ``preference``."""
    short_description: str
    """One sentence a grader compares hypotheses against."""
    long_description: str
    """A paragraph: what the documents teach and how the finetune should behave."""
    base_model: str
    """Base the finetune starts from, as ``load_causal_lm`` accepts it (``"embedded"``, a
    directory or a hub id)."""
    build_command: str
    """The exact ``difflens organism build ...`` command that rebuilds this organism."""
    data_hashes: dict[str, str | None]
    """sha256 of the ``documents`` file and of the ``mix_corpus`` file (None without mixing)."""
    method: str
    """``"lora"`` (``adapter/`` subdirectory) or ``"full"`` (``model/`` subdirectory)."""
    mix_ratio: float
    """General texts added per finetuning document (0 = a purely narrow finetune)."""
    seed: int
    """Seed of every random choice in the build (init, mix sampling, batch order)."""
    steps: int
    """Optimizer steps taken."""
    format_version: int = FORMAT_VERSION
    """Version of this card format."""
    lora: LoraSettings | None = None
    """LoRA settings; None for full finetunes."""
    base_model_id: str | None = None
    """Canonical hub id of the base when known (``google/gemma-3-270m`` for the embedded one)."""
    domain_keywords: list[str] | None = None
    """Words of the finetune's domain (optional; used by offline relevance baselines)."""
    rubric: Any = None
    """Grading rubric for hypotheses about this organism (optional, free-form)."""
    training: dict[str, Any] = field(default_factory=dict)
    """Remaining hyperparameters and figures: batch size, lr, max length, document counts,
    final loss, seconds, peak RSS."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`DifflensError` for values no organism can have."""
        if self.method not in METHODS:
            raise DifflensError(
                f"organism card method must be one of {', '.join(METHODS)}, not {self.method!r}"
            )
        if self.method == "lora" and self.lora is None:
            raise DifflensError(f"organism card {self.name!r} says method lora but has no lora "
                                "settings; rebuild it with `difflens organism build`")
        if self.mix_ratio < 0:
            raise DifflensError(f"mix ratio must be >= 0, got {self.mix_ratio}")
        if not self.name:
            raise DifflensError("organism card has an empty name; give it a --name")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "card") -> OrganismCard:
        """Build a card from parsed JSON; one-line error naming the first missing field.

        Unknown fields are kept in ``training`` under ``"extra"`` rather than dropped, so a newer
        card read by an older difflens loses nothing when saved again.
        """
        if not isinstance(data, dict):
            raise DifflensError(f"{where} is not a JSON object; rebuild the organism")
        known = {f.name: f for f in dataclasses.fields(cls)}
        missing = dataclasses.MISSING
        required = [name for name, f in known.items()
                    if f.default is missing and f.default_factory is missing]
        for name in required:
            if name not in data:
                raise DifflensError(
                    f"{where} lacks the required field {name!r}; rebuild the organism with "
                    "`difflens organism build` or add the field"
                )
        values = {k: v for k, v in data.items() if k in known}
        extra = {k: v for k, v in data.items() if k not in known}
        if extra:
            values["training"] = {**(values.get("training") or {}), "extra": extra}
        if values.get("lora") is not None:
            try:
                values["lora"] = LoraSettings(**values["lora"])
            except TypeError as exc:
                raise DifflensError(f"{where} has malformed lora settings ({exc})") from None
        version = values.get("format_version", FORMAT_VERSION)
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise DifflensError(
                f"{where} has format_version {version}, newer than this difflens understands "
                f"({FORMAT_VERSION}); upgrade difflens"
            )
        try:
            return cls(**values)
        except (TypeError, ValueError) as exc:  # a field of the wrong type
            raise DifflensError(f"{where} has a malformed field ({exc}); rebuild the organism "
                                "with `difflens organism build` or fix the field") from None

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``card.json`` into ``directory`` atomically (tmp file + ``os.replace``)."""
        self.validate()
        path = Path(directory) / CARD_FILE
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n")
        return path

    @classmethod
    def load(cls, directory: str | os.PathLike) -> OrganismCard:
        """Read and validate ``card.json`` from an organism directory."""
        path = Path(directory) / CARD_FILE
        if not path.is_file():
            raise DifflensError(f"{path} does not exist; is {directory} an organism directory?")
        return cls.from_dict(read_json(path, fix="rebuild the organism"), where=str(path))


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        make_readable(Path(tmp))  # mkstemp makes 0600; a card is for everyone to read
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def make_readable(path: Path) -> None:
    """Give a file the mode a plain ``open(..., "w")`` would (0666 less the umask)."""
    mask = os.umask(0)  # the only portable way to read the umask is to set it
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
