"""Runners over the activation cache: build it from a model pair, train a dictionary on it.

``build_cache`` runs the models to fill the cache (it lives in
:mod:`~difflens.methods.dictionary.building`, with the writer and the torchrun build, and is
re-exported here): it tokenises the corpus, plans shards of whole sequences, runs base and
finetuned forwards (stopped at the deepest cached layer) one shard at a time while the previous
shard is written behind, and resumes after the last finished shard.
``train_on_cache`` is a thin layer over :class:`Trainer` that reads the cache through the
shuffling reader.  The readouts that run a model for the analysis live here too (logit lens,
steering); the analysis runner is :func:`difflens.methods.dictionary.analysis.analyze`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from difflens.errors import DifflensError
from difflens.io.artifacts import check_same_settings, read_optional_json, write_json
from difflens.methods.dictionary.building import (  # re-exported: the cache's one entry point
    CacheWriter as CacheWriter,
)
from difflens.methods.dictionary.building import build_cache as build_cache
from difflens.methods.dictionary.building import plan_shards as plan_shards
from difflens.methods.dictionary.building import shard_rows as shard_rows
from difflens.methods.dictionary.building import tokenize_corpus as tokenize_corpus
from difflens.methods.dictionary.cache import ActivationCache, CacheReader, check_cache_matches
from difflens.methods.dictionary.config import CacheConfig as CacheConfig
from difflens.methods.dictionary.config import (
    DictionaryConfig,
    TrainConfig,
    default_width,
)

if TYPE_CHECKING:
    from difflens.methods.dictionary.train import TrainResult
    from difflens.models.pair import ModelPair

TRAINING_FILE = "training.json"
TRAIN_LOG_FILE = "train_log.json"


# ---- training -------------------------------------------------------------------------------
@dataclass
class ReadConfig:
    """How training reads the cache."""

    val_fraction: float = 0.1  # share of sequences held out for validation / analysis
    split_seed: int = 0  # seed of the train/validation split (analysis reuses it)
    shuffle_seed: int = 0  # seed of the shard order and the shuffle buffer
    buffer_rows: int = 1 << 16  # shuffle buffer size in rows
    chunk_rows: int = 4096  # rows per chunk handed to the trainer
    # Under torchrun: "stream" (every rank reads everything, keeps its share of each batch) or
    # "shards" (every rank reads its own shards); the same when alone.
    data_split: str = "stream"


# Settings that may change between an interrupted run and its resumption.
_NOT_IDENTITY = ("device", "progress", "log_every", "checkpoint_every", "keep_checkpoints")


def train_on_cache(kind: str, cache_dir: str | Path, out: str | Path, *,
                   dictionary: dict[str, Any], train: TrainConfig,
                   read: ReadConfig | None = None, layer: int | float | None = None,
                   base: str | None = None, finetuned: str | None = None) -> TrainResult:
    """Train a ``"crosscoder"`` or ``"diff_sae"`` on the train split of a cache into ``out``.

    ``dictionary``: :class:`DictionaryConfig` fields except ``d_in`` (taken from the cache);
    without ``width``, 8 × d (:func:`~difflens.methods.dictionary.config.default_width`).
    ``base``/``finetuned``/``layer``, when given, must match the cache (one-line error).  The
    normalisation scales and the initial decoder bias (the mean) come from the cache's
    statistics over all its rows.  An interrupted run resumes from its last checkpoint when
    called again with the same arguments.

    Under torchrun with several ranks the training is data parallel
    (:mod:`~difflens.methods.dictionary.train`): with ``read.data_split == "stream"`` every
    rank reads the same shuffled stream and trains on its share of each batch; with
    ``"shards"`` each rank reads only its own shards (:func:`~.cache.assign_shards`) and trains
    on ``B / N`` rows of them per step.  Rank 0 alone writes, the others raise
    :class:`~difflens.distributed.WorkerDone` once the last step is done.
    """
    from difflens import distributed as dd
    from difflens.methods.dictionary.train import Trainer

    if kind not in ("crosscoder", "diff_sae"):
        raise DifflensError(f"unknown dictionary kind {kind!r}; use crosscoder or diff_sae")
    read = read or ReadConfig()
    # Every rank builds the same model; rank 0 alone checks and records the settings, and a
    # failure anywhere is one line on rank 0 (run_shard).
    model, reader = dd.run_shard("the training setup", lambda: _training_setup(
        kind, cache_dir, out, dictionary, train, read, layer, base, finetuned))
    result = Trainer(model, train, out, data_split=read.data_split).fit(reader)
    if not dd.is_main():
        raise dd.WorkerDone()  # rank 0 writes the dictionary and the log
    dd.end_collectives()
    write_json(Path(out) / TRAIN_LOG_FILE, result._asdict())
    return result


def _training_setup(kind: str, cache_dir: str | Path, out: str | Path,
                    dictionary: dict[str, Any], train: TrainConfig, read: ReadConfig,
                    layer: int | float | None, base: str | None, finetuned: str | None
                    ) -> tuple[Any, CacheReader]:
    """The dictionary initialised from the cache's statistics and this rank's reader of the
    train split; on rank 0 the run's settings checked against (or recorded in) ``out``."""
    from difflens import distributed as dd
    from difflens.methods.dictionary.crosscoder import Crosscoder, DiffSAE

    cache = ActivationCache(cache_dir)
    check_cache_matches(cache, base, finetuned, layer)
    layer = cache.resolve_layer(layer)
    # The width default (8 × d) needs the cache's d: resolved here, for the CLI and Python.
    width = dictionary.get("width") or default_width(cache.d_model)
    config = DictionaryConfig(d_in=cache.d_model, **{**dictionary, "width": width})
    model = Crosscoder(config) if kind == "crosscoder" else DiffSAE(config)
    stats = cache.stats(layer)
    norms = stats.mean_norm if kind == "crosscoder" else torch.tensor([stats.diff_mean_norm])
    if bool((norms <= 0).any()):
        raise DifflensError(f"the cache {cache.path} has all-zero activations at layer {layer} "
                            "(for a diff-SAE: base and finetuned are identical)")
    scale = config.effective_norm_target / norms.float()
    model.normalizer.set_scales(scale)
    with torch.no_grad():  # start the decoder bias at the data mean: no steps spent finding it
        mean = stats.mean.float() if kind == "crosscoder" else (stats.mean[1] - stats.mean[0])
        model.b_dec.copy_(mean.float().reshape(model.b_dec.shape) * scale[:, None])
    rank, world_size = dd.world()
    reader = cache.reader(layer, "train", val_fraction=read.val_fraction,
                          split_seed=read.split_seed, seed=read.shuffle_seed,
                          buffer_rows=read.buffer_rows, chunk_rows=read.chunk_rows, epochs=None,
                          data_split=read.data_split, rank=rank, world_size=world_size)
    train_dict = {k: v for k, v in train.to_dict().items() if k not in _NOT_IDENTITY}
    read_dict = asdict(read)
    if read.data_split == "stream":  # the default is not recorded: older runs still resume
        del read_dict["data_split"]
    record = {"kind": kind, "cache": str(cache.path.resolve()), "layer": layer,
              "models": cache.models, "read": read_dict,
              # how the step is computed, not what it computes (dense = sparse up to rounding)
              "dictionary": {k: v for k, v in config.to_dict().items() if k != "compute_path"},
              "train": train_dict}
    if dd.is_main():
        out = Path(out)
        old = read_optional_json(out / TRAINING_FILE)
        if old is not None:
            check_same_settings(out, old, record, "another training run")
        else:
            write_json(out / TRAINING_FILE, record)
    return model, reader


# ---- readouts that run the models ---------------------------------------------------------
def logit_lens(pair: ModelPair, directions: Tensor, top: int) -> list[list[dict[str, Any]]]:
    """Top ``top`` tokens of the finetuned model's logit lens of each direction ``(J, d)``
    (:func:`difflens.models.lens.logit_lens`), with their logits."""
    from difflens.models.lens import logit_lens as read_lens

    with pair.use("ft") as (_model, arch):
        readout = read_lens(arch, directions, top)
    tok = pair.tokenizer
    return [[{"token": tok.decode([t]), "id": t, "logit": round(v, 4)}
             for t, v in zip(row_ids, row_vals, strict=True)]
            for row_ids, row_vals in zip(readout.ids.tolist(), readout.logits.tolist(),
                                         strict=True)]


@torch.no_grad()
def steer(pair: ModelPair, layer: int, latents: list[int], directions: Tensor, scale: float,
          alphas: Iterable[float], prompts: list[str], max_new_tokens: int
          ) -> list[dict[str, Any]]:
    """Greedy generations of the finetuned model with ``alpha · scale · d̂_j`` added at
    ``layer`` (every position) for each latent ``j`` (direction ``(J, d)``), strength and
    prompt, plus one unsteered row per prompt (``latent: None``), in one batch of ADL's
    per-row-steered generation (:func:`difflens.models.generation.generate`)."""
    from difflens.data.chat import chat_prompt
    from difflens.models.generation import SamplingConfig, Steer, generate

    unit = directions / directions.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    rows: list[tuple[int | None, float, str]] = [(None, 0.0, p) for p in prompts]
    rows += [(j, a, p) for j in range(unit.shape[0]) for a in alphas for p in prompts]
    steering = [None if j is None else Steer(unit[j] * scale, layer, a) for j, a, _ in rows]
    gens = generate(pair, [chat_prompt(pair.tokenizer, p) for _, _, p in rows],
                    SamplingConfig(max_new_tokens=max_new_tokens, do_sample=False), steering)
    return [{"latent": None if j is None else latents[j], "alpha": alpha, "prompt": prompt,
             "text": text} for (j, alpha, prompt), text in zip(rows, gens.texts, strict=True)]
