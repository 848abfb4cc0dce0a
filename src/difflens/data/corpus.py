"""Text corpora: plain text, JSONL, Parquet, Hugging Face datasets, and the shipped defaults.

A corpus is just a list of strings.  Chat-style records (``{"messages": [...]}``) are rendered
with the tokenizer's chat template by :mod:`difflens.data.chat` when a tokenizer is given.

Formats:
  * ``.txt``: one text per non-empty line;
  * ``.jsonl``: one JSON object per line with a ``text`` field (``text_field`` in Python), or
    a ``messages`` list of ``{"role", "content"}`` dicts;
  * ``.parquet``: a ``text`` column (``text_field`` in Python);
  * ``hf:NAME[:SPLIT]``: a Hugging Face dataset (needs the ``datasets`` extra and a connection
    or a local cache);
  * ``reference``: the shipped general-English reference corpus (see assets/REFERENCE_SOURCE.md).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from difflens.errors import DifflensError

log = logging.getLogger(__name__)

ASSETS = Path(__file__).resolve().parent / "assets"
REFERENCE = "reference"


def reference_path() -> Path:
    """Path of the shipped general-English reference corpus (JSONL)."""
    return ASSETS / "reference.jsonl"


def chat_prompts() -> list[str]:
    """The shipped neutral chat prompts (for steering and unsteered baselines)."""
    return [rec["prompt"] for rec in _read_jsonl(ASSETS / "chat_prompts.jsonl")]


SUFFIXES = (".jsonl", ".parquet", ".txt", ".text", "")


def check_corpus_source(source: str | Path) -> None:
    """The checks of a corpus name that read nothing: a shipped name, ``hf:NAME``, or an
    existing file of a supported format (one line otherwise)."""
    name = str(source)
    if name == REFERENCE or name.startswith("hf:"):
        return
    _corpus_path(name)


def check_corpus(source: str | Path, limit: int | None = None) -> None:
    """Read and check a local corpus before any model loads (a Hugging Face dataset is only
    checked for its extra: reading it twice would cost a download)."""
    name = str(source)
    if name.startswith("hf:"):
        _datasets()
        return
    load_texts(source, limit=limit)


def _corpus_path(name: str) -> Path:
    path = Path(name).expanduser()
    if path.is_dir():
        raise DifflensError(f"corpus {path} is a directory; give a .txt, .jsonl or .parquet "
                            "file, 'reference' or hf:DATASET")
    if not path.is_file():
        raise DifflensError(f"corpus file {path} does not exist; check the path")
    if path.suffix.lower() not in SUFFIXES:
        raise DifflensError(
            f"unsupported corpus format {path.suffix.lower()!r} for {path}; use .txt, .jsonl, "
            ".parquet or hf:DATASET"
        )
    return path


def load_texts(
    source: str | Path,
    limit: int | None = None,
    text_field: str = "text",
    tokenizer: Any = None,
) -> list[str]:
    """Load up to ``limit`` texts from ``source`` (see module docstring for formats).

    Chat records are rendered with ``tokenizer``'s chat template when one is given, else their
    message contents are joined.  Raises :class:`DifflensError` for a missing, undecodable or
    empty corpus.
    """
    name = str(source)
    if name == REFERENCE:
        records = _read_jsonl(reference_path())
    elif name.startswith("hf:"):
        records = _read_hf(name[3:], limit)
    else:
        path = _corpus_path(name)
        suffix = path.suffix.lower()
        if suffix == ".jsonl":
            records = _read_jsonl(path)
        elif suffix == ".parquet":
            records = _read_parquet(path, text_field)
        else:
            records = [{"text": line} for line in _read_text(path).splitlines() if line.strip()]
    texts = []
    for rec in records:
        text = _record_text(rec, text_field, tokenizer)
        if text and text.strip():
            texts.append(text)
        if limit is not None and len(texts) >= limit:
            break
    if not texts:
        keys = sorted({k for rec in records[:100] if isinstance(rec, dict) for k in rec})
        if keys and text_field not in keys and "messages" not in keys:
            raise DifflensError(
                f"corpus {name} has no '{text_field}' field (its records have: "
                f"{', '.join(keys[:8])}); rename the field holding the text to '{text_field}'"
            )
        raise DifflensError(
            f"corpus {name} is empty (no non-empty '{text_field}' texts); give a corpus with text"
        )
    return texts


def _record_text(rec: Any, text_field: str, tokenizer: Any) -> str | None:
    if isinstance(rec, str):
        return rec
    if not isinstance(rec, dict):
        return None
    if text_field in rec and isinstance(rec[text_field], str):
        return rec[text_field]
    messages = rec.get("messages")
    if isinstance(messages, list):
        if tokenizer is not None:
            from difflens.data.chat import render_chat

            return render_chat(tokenizer, messages)
        return "\n".join(str(m.get("content", "")) for m in messages)
    return None


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DifflensError(
            f"{path} is not valid UTF-8 (byte {exc.start}); re-encode it as UTF-8"
        ) from None
    except OSError as exc:
        raise DifflensError(f"cannot read corpus file {path}: {exc.strerror or exc}") from None


def _read_jsonl(path: Path) -> list[Any]:
    records = []
    for lineno, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise DifflensError(f"{path}:{lineno} is not valid JSON ({exc.msg}); fix that line") \
                from None
    return records


def _read_parquet(path: Path, text_field: str) -> list[dict]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several unrelated types for bad files
        raise DifflensError(f"{path} is not a readable Parquet file ({exc})") from None
    if text_field not in table.column_names:
        raise DifflensError(
            f"{path} has no column {text_field!r} (columns: {', '.join(table.column_names)}); "
            f"rename the column holding the text to {text_field!r}"
        )
    return [{text_field: value} for value in table.column(text_field).to_pylist()]


def _datasets() -> Any:
    try:
        import datasets
    except ImportError:
        raise DifflensError(
            "hf: corpora need the datasets extra; run: pip install 'difflens[datasets]'"
        ) from None
    return datasets


def _read_hf(spec: str, limit: int | None) -> list[Any]:
    name, _, split = spec.partition(":")
    datasets = _datasets()
    try:
        stream = datasets.load_dataset(name, split=split or "train", streaming=True)
        return list(stream.take(limit)) if limit else list(stream)
    except Exception as exc:  # network, missing dataset, bad split: all user-fixable
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DifflensError(f"could not load dataset {name!r}: {first}") from None
