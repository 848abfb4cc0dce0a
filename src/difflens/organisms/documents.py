"""Training data of an organism: the narrow documents, the mixed-in general texts, token ids.

The documents are the finetune's whole point; the general texts (``--mix R``: R per document)
dilute it, which the seeds' ablation shows largely erases the diffing trace.  Everything random
here draws from one seeded generator so that a build is reproducible from its card.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from difflens.data.corpus import REFERENCE, load_texts, reference_path
from difflens.data.tokenize import encode
from difflens.errors import DifflensError
from difflens.io.artifacts import read_json
from difflens.organisms.card import sha256_file

log = logging.getLogger(__name__)


@dataclass
class TrainingTexts:
    """The texts one build trains on, with the hashes that identify them."""

    documents: list[str]
    mix: list[str]
    documents_sha256: str
    mix_sha256: str | None


def documents_card_path(documents: Path) -> Path:
    """``data/cake_bake.jsonl`` -> ``data/cake_bake.card.json`` (metadata kept beside the data)."""
    return documents.with_name(documents.stem + ".card.json")


def read_documents_card(documents: Path) -> dict[str, Any]:
    """Metadata written next to a documents file (name, type, descriptions, ...), or ``{}``."""
    path = documents_card_path(documents)
    if not path.is_file():
        return {}
    return read_json(path, fix="fix or remove it", expect=dict)


def load_training_texts(
    documents: Path, mix: float, mix_corpus: str | None, seed: int
) -> TrainingTexts:
    """Load the documents and sample ``round(mix * len(documents))`` general texts.

    Raises:
        DifflensError: missing/empty/non-UTF-8 documents, a negative ratio, or a missing mix
            corpus.
    """
    if not documents.is_file():
        raise DifflensError(f"documents file {documents} does not exist; check --documents")
    docs = load_texts(documents)  # one-line errors for empty, non-UTF-8 or bad JSON files
    if mix < 0:
        raise DifflensError(f"--mix must be >= 0 general texts per document, got {mix}")
    n_mix = round(mix * len(docs))
    if n_mix == 0:
        return TrainingTexts(docs, [], sha256_file(documents), None)
    source = mix_corpus or REFERENCE
    if source == REFERENCE and not reference_path().is_file():
        raise DifflensError(
            f"the shipped reference corpus ({reference_path()}) is missing; pass --mix-corpus FILE"
        )
    pool = load_texts(source)
    general = sample_texts(pool, n_mix, random.Random(seed))
    return TrainingTexts(docs, general, sha256_file(documents), _corpus_hash(source, pool))


def sample_texts(pool: list[str], n: int, rng: random.Random) -> list[str]:
    """``n`` texts from ``pool``, without replacement while the pool lasts.

    A pool smaller than ``n`` is used whole, repeatedly (each pass reshuffled), with a warning:
    repeating general text is still closer to what was asked than silently mixing less.
    """
    if n <= len(pool):
        return rng.sample(pool, n)
    log.warning("mix corpus has %d texts but %d were asked for; repeating texts", len(pool), n)
    out: list[str] = []
    while len(out) < n:
        out.extend(rng.sample(pool, min(len(pool), n - len(out))))
    return out


def _corpus_hash(source: str, pool: list[str]) -> str:
    path = reference_path() if source == REFERENCE else Path(source).expanduser()
    if path.is_file():
        return sha256_file(path)
    # hf: datasets have no single file; hash the texts themselves instead.
    return hashlib.sha256("\n".join(pool).encode("utf-8")).hexdigest()


def tokenize_texts(tokenizer: Any, texts: list[str], max_length: int) -> list[list[int]]:
    """Token ids per text: BOS first, cut to ``max_length``, EOS appended when the text fits.

    EOS marks a real document end only; a truncated text gets none, so the model is not taught
    that documents stop mid-sentence.
    """
    if max_length < 2:
        raise DifflensError(f"--max-length must be at least 2 tokens, got {max_length}")
    eos = tokenizer.eos_token_id
    rows = []
    for text in texts:
        ids = encode(tokenizer, text)
        if len(ids) < max_length and eos is not None:
            ids = [*ids, eos]
        rows.append(ids[:max_length])
    return rows


def write_jsonl(path: Path, texts: list[str]) -> None:
    """Write texts as ``{"text": ...}`` lines (the format :func:`load_texts` reads back)."""
    with open(path, "w", encoding="utf-8") as fh:
        for text in texts:
            fh.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")


MIX_TEXTS = "mix_texts.jsonl"  # in an organism directory: the general texts mixed into training


def mixed_in_texts(organism_dir: str | Path | None) -> set[str]:
    """The general texts an organism was trained on besides its documents (empty if none)."""
    path = Path(organism_dir or "") / MIX_TEXTS
    if not organism_dir or not path.is_file():
        return set()
    return set(load_texts(path))
