"""The registry of organisms: what each one is, where its weights and data are, how to grade it.

Two sources are merged:

* ``organisms/data/<name>.card.json`` (+ ``<name>.jsonl``): the documents of every organism
  difflens knows how to build, with its type, descriptions and domain keywords;
* ``organisms/shipped/<name>/card.json``: organisms that are built (weights present).

An organism with data but no build has ``weights=None``; it can still be evaluated with budget-0
agents on saved run artifacts, but nothing can ask its model.  Every entry's type is checked
against the rubrics at load, so a typo in a card fails at once with one line.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from difflens.errors import DifflensError
from difflens.io.artifacts import read_json
from difflens.organisms.rubrics import base_type, rubric_for

ORGANISMS_DIR = Path(__file__).resolve().parent
DATA_DIR = ORGANISMS_DIR / "data"
SHIPPED_DIR = ORGANISMS_DIR / "shipped"
DEFAULT_BASE = "embedded"  # the base the builder uses unless told otherwise


@dataclass(frozen=True)
class OrganismEntry:
    """One organism as the evaluation sees it."""

    name: str
    base: str
    """Base model as ``ModelPair.load`` accepts it (``"embedded"``, a directory or a hub id)."""
    weights: str | None
    """The organism directory (adapter or full model inside) when built, else ``None``."""
    method: str | None
    """``"lora"`` or ``"full"`` when built."""
    type: str
    short_description: str
    long_description: str
    training_data: str | None
    """Path of the finetuning documents (JSONL), when present."""
    rubric_type: str
    """The type whose rubric grades hypotheses about this organism (mixed variants: base type)."""
    domain_keywords: list[str] = field(default_factory=list)
    mix_ratio: float = 0.0
    """General texts mixed in per document when it was built (0 for unmixed / unbuilt)."""
    documents_hash: str | None = None
    """sha256 of the training documents when built: organisms sharing it are twins."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Card fields with no slot here (e.g. ``secret_word``)."""

    @property
    def built(self) -> bool:
        return self.weights is not None

    @property
    def rubric(self) -> str:
        return rubric_for(self.rubric_type)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "built": self.built}


_KNOWN = {"name", "type", "short_description", "long_description", "domain_keywords",
          "base_model", "method"}


def _entry(card: dict[str, Any], where: str, weights: str | None,
           training_data: str | None) -> OrganismEntry:
    for key in ("name", "type", "short_description"):
        if not isinstance(card.get(key), str) or not card[key].strip():
            raise DifflensError(f"{where} lacks the field {key!r}; add it to the card")
    rubric_for(card["type"], where=where)  # fail at load, not at grading time
    return OrganismEntry(
        name=card["name"],
        base=str(card.get("base_model") or DEFAULT_BASE),
        weights=weights,
        method=card.get("method") if weights else None,
        type=card["type"],
        short_description=card["short_description"].strip(),
        long_description=(card.get("long_description") or card["short_description"]).strip(),
        training_data=training_data,
        rubric_type=base_type(card["type"]),
        domain_keywords=list(card.get("domain_keywords") or []),
        mix_ratio=float(card.get("mix_ratio") or 0.0) if weights else 0.0,
        documents_hash=(card.get("data_hashes") or {}).get("documents") if weights else None,
        extra={k: v for k, v in card.items()
               if k not in _KNOWN and k not in ("build_command", "data_hashes", "training",
                                                "lora", "format_version", "rubric", "seed",
                                                "steps", "mix_ratio", "base_model_id")},
    )


def _read(path: Path) -> dict[str, Any]:
    return read_json(path, what="organism card", fix="repair it or rebuild the organism",
                     expect=dict)


def load_registry(data_dir: Path | str | None = None,
                  shipped_dir: Path | str | None = None) -> dict[str, OrganismEntry]:
    """All organisms by name, sorted: data cards merged with built organisms."""
    data_dir = Path(data_dir) if data_dir is not None else DATA_DIR
    shipped_dir = Path(shipped_dir) if shipped_dir is not None else SHIPPED_DIR
    cards: dict[str, tuple[dict[str, Any], str, str | None]] = {}
    for path in sorted(data_dir.glob("*.card.json")) if data_dir.is_dir() else []:
        card = _read(path)
        docs = path.with_name(path.name.removesuffix(".card.json") + ".jsonl")
        cards[str(card.get("name") or path.name)] = (
            card, str(path), str(docs) if docs.is_file() else None)
    built: dict[str, tuple[dict[str, Any], str]] = {}
    for path in sorted(shipped_dir.glob("*/card.json")) if shipped_dir.is_dir() else []:
        card = _read(path)
        built[str(card.get("name") or path.parent.name)] = (card, str(path.parent))
    entries: dict[str, OrganismEntry] = {}
    for name in sorted(set(cards) | set(built)):
        data_card, where, docs = cards.get(name, ({}, "", None))
        build_card, weights = built.get(name, ({}, None))
        if weights is not None:
            own_docs = Path(weights) / "documents.jsonl"
            docs = docs or (str(own_docs) if own_docs.is_file() else None)
            where = where or str(Path(weights) / "card.json")
        # The built card is the authority on base and method; the data card on descriptions.
        merged = {**build_card, **{k: v for k, v in data_card.items() if v is not None}}
        entries[name] = _entry(merged, where, weights, docs)
    return entries


def get_organism(name: str, registry: dict[str, OrganismEntry] | None = None) -> OrganismEntry:
    """One organism by name; one-line error listing the known names."""
    registry = registry if registry is not None else load_registry()
    if name not in registry:
        raise DifflensError(f"unknown organism {name!r}; known: {', '.join(registry) or 'none'}")
    return registry[name]
