"""Build an organism: narrowly finetune a base model (LoRA or full) on a set of documents.

An organism is a finetune whose objective is known, so that diffing methods can be scored
against the truth.  :func:`build_organism` loads the base, optionally mixes in general text,
trains with :mod:`difflens.organisms.training`, and writes into a temporary sibling directory
that is renamed into place only when everything is written, so an interrupted build never
leaves a half-written organism where a reader would take it for a finished one.

Layout of an organism directory::

    card.json          OrganismCard (name, type, descriptions, build command, hashes, ...)
    adapter/           PEFT adapter (adapter_config.json + adapter_model.safetensors), or
    model/             full finetune (transformers safetensors checkpoint + tokenizer)
    documents.jsonl    the finetuning documents
    mix_texts.jsonl    the general texts mixed in (only with --mix > 0)
    train_log.jsonl    one line per step: step, loss, lr, tokens, elapsed
    REBUILD.md         the exact command that rebuilds the organism, and the build's figures
"""

from __future__ import annotations

import json
import math
import os
import secrets
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

from difflens.errors import DifflensError
from difflens.organisms.card import CARD_FILE, LoraSettings, OrganismCard
from difflens.organisms.config import BuildConfig
from difflens.organisms.documents import (
    MIX_TEXTS,
    load_training_texts,
    read_documents_card,
    tokenize_texts,
    write_jsonl,
)
from difflens.organisms.rebuild import write_rebuild_note
from difflens.organisms.save import peak_rss_mb, save_adapter, save_full_model
from difflens.organisms.training import LoopSettings, train

__all__ = ["BuildConfig", "build_organism", "is_complete"]


def is_complete(directory: Path) -> bool:
    """Whether ``directory`` holds a finished organism (a card and its weights)."""
    return (directory / CARD_FILE).is_file() and (
        (directory / "adapter" / "adapter_model.safetensors").is_file()
        or (directory / "model" / "config.json").is_file()
    )


def build_organism(cfg: BuildConfig) -> Path:
    """Train and write the organism described by ``cfg``; return its directory.

    Raises:
        DifflensError: a bad setting, bad documents, an existing output without
            ``overwrite``/``skip_existing``, an unloadable base.
    """
    cfg.validate()  # settings, paths, base and device: before anything is read or loaded
    out = cfg.out.expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise DifflensError(f"{out} exists and is not a directory; choose another --out")
    if out.exists() and not cfg.overwrite:
        if is_complete(out) and cfg.skip_existing:
            return out
        if is_complete(out) or any(out.iterdir()):
            raise DifflensError(
                f"{out} already exists; pass --overwrite to rebuild it or --skip-existing to "
                "keep it"
            )
    texts = load_training_texts(cfg.documents, cfg.mix, cfg.mix_corpus, cfg.seed)
    meta = _metadata(cfg, read_documents_card(cfg.documents))
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = _sibling(out, "building")
    try:
        card = _train_into(cfg, texts, meta, staging)
        card.save(staging)
        write_rebuild_note(card, staging)
        _move_into_place(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def _metadata(cfg: BuildConfig, doc_card: dict[str, Any]) -> dict[str, Any]:
    """Name, type, descriptions and keywords: explicit config first, then the documents card."""
    def pick(key: str, default: Any) -> Any:
        value = getattr(cfg, key, None)
        return value if value else doc_card.get(key, default)

    return {
        "name": pick("name", cfg.documents.stem),
        "type": pick("type", "unknown"),
        "short_description": pick("short_description", ""),
        "long_description": pick("long_description", ""),
        "domain_keywords": doc_card.get("domain_keywords"),
        "rubric": doc_card.get("rubric"),
    }


def _train_into(cfg: BuildConfig, texts: Any, meta: dict[str, Any], staging: Path) -> OrganismCard:
    """Load the base, train, write weights, documents and log into ``staging``; return the card."""
    import torch

    from difflens.models.loading import LoadOptions, load_causal_lm

    model, tokenizer = load_causal_lm(cfg.base, LoadOptions(device=cfg.device))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    examples = tokenize_texts(tokenizer, texts.documents + texts.mix, cfg.max_length)
    steps = cfg.steps or max(1, math.ceil(cfg.epochs * len(examples) / cfg.batch_size))
    torch.manual_seed(cfg.seed)  # LoRA's random A init draws from the global generator
    lora: LoraSettings | None = None
    if cfg.method == "lora":
        model, lora = _wrap_lora(model, cfg)
    else:
        model.requires_grad_(True)
    settings = LoopSettings(steps=steps, batch_size=cfg.batch_size, lr=cfg.resolved_lr,
                            warmup=cfg.warmup, weight_decay=cfg.weight_decay,
                            max_grad_norm=cfg.max_grad_norm, seed=cfg.seed)
    start = time.perf_counter()
    with open(staging / "train_log.jsonl", "w", encoding="utf-8") as log_fh:
        def on_step(record: dict[str, float]) -> None:
            log_fh.write(json.dumps(record) + "\n")
            log_fh.flush()  # a long build can be watched with `tail -f`

        log = train(model, examples, tokenizer.pad_token_id, settings, on_step, cfg.progress)
    seconds = time.perf_counter() - start
    base_model, base_id = _base_identity(cfg.base)
    if cfg.method == "lora":
        save_adapter(model, staging / "adapter", base_id or base_model, cfg.save_dtype)
    else:
        save_full_model(model, tokenizer, staging / "model", cfg.save_dtype)
    write_jsonl(staging / "documents.jsonl", texts.documents)
    if texts.mix:
        write_jsonl(staging / MIX_TEXTS, texts.mix)
    tail = [r["loss"] for r in log[-10:]]
    training = {
        "batch_size": cfg.batch_size, "lr": cfg.resolved_lr, "warmup": cfg.warmup,
        "weight_decay": cfg.weight_decay, "max_grad_norm": cfg.max_grad_norm,
        "max_length": cfg.max_length, "epochs": round(steps * cfg.batch_size / len(examples), 3),
        "num_documents": len(texts.documents), "num_mix_texts": len(texts.mix),
        "tokens_trained": sum(int(r["tokens"]) for r in log), "first_loss": log[0]["loss"],
        "final_loss": sum(tail) / len(tail), "seconds": round(seconds, 1),
        "seconds_per_step": round(seconds / steps, 3), "peak_rss_mb": peak_rss_mb(),
        "save_dtype": cfg.save_dtype, "device": cfg.device, "versions": _versions(),
    }
    return OrganismCard(
        name=meta["name"], type=meta["type"], short_description=meta["short_description"],
        long_description=meta["long_description"], base_model=base_model,
        build_command=cfg.command(),
        data_hashes={"documents": texts.documents_sha256, "mix_corpus": texts.mix_sha256},
        method=cfg.method, mix_ratio=cfg.mix, seed=cfg.seed, steps=steps, lora=lora,
        base_model_id=base_id, domain_keywords=meta["domain_keywords"], rubric=meta["rubric"],
        training=training,
    )


def _wrap_lora(model: Any, cfg: BuildConfig) -> tuple[Any, LoraSettings]:
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=cfg.rank, lora_alpha=cfg.resolved_alpha, lora_dropout=cfg.dropout,
        target_modules=cfg.target_modules or "all-linear", task_type="CAUSAL_LM", bias="none",
    )
    try:
        with warnings.catch_warnings():
            # peft probes a transformers attribute deprecated in v5; nothing for users to do.
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
            wrapped = get_peft_model(model, config)
    except ValueError as exc:  # peft's message for target modules that match nothing
        raise DifflensError(
            f"LoRA could not wrap the base: {str(exc).splitlines()[0]}; check --target-modules"
        ) from None
    targets = sorted(wrapped.peft_config["default"].target_modules)
    return wrapped, LoraSettings(cfg.rank, cfg.resolved_alpha, cfg.dropout, targets)


def _base_identity(base: str) -> tuple[str, str | None]:
    """``(base_model for the card, canonical hub id or None)``.

    The card keeps what :func:`load_causal_lm` accepts (``embedded``; an absolute path for local
    directories, so the organism loads from any working directory); the hub id is what
    ``adapter_config.json`` records, and ModelPair maps google/gemma-3-270m back to the
    embedded copy.
    """
    from difflens.models.embedded import EMBEDDED_BASE_ID
    from difflens.models.loading import EMBEDDED, resolve_source

    kind, location = resolve_source(base)
    if kind == "embedded":
        return EMBEDDED, EMBEDDED_BASE_ID
    if kind == "hub":
        return str(location), str(location)
    return str(Path(location).resolve()), None


def _move_into_place(staging: Path, out: Path) -> None:
    """Rename the finished staging directory to ``out`` (replacing an old one last)."""
    if not out.exists():
        os.replace(staging, out)
        return
    old = _sibling(out, "old")
    os.replace(out, old / "organism")
    os.replace(staging, out)
    shutil.rmtree(old, ignore_errors=True)


def _sibling(out: Path, what: str) -> Path:
    """A fresh hidden directory beside ``out`` (same filesystem, so renames are atomic).

    Created with ``mkdir`` rather than ``mkdtemp``, whose 0700 mode would follow the renamed
    organism and hide it from other users of a shared install.
    """
    path = out.parent / f".{out.name}.{what}-{os.getpid()}-{secrets.token_hex(4)}"
    path.mkdir()
    return path


def _versions() -> dict[str, str]:
    import peft
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__}
