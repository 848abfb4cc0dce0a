"""Runners over the activation cache: build it from a model pair, train a dictionary on it.

``build_cache`` runs the models to fill the cache: it tokenises
the corpus, plans shards of whole sequences, and runs base and finetuned forwards (stopped at
the deepest cached layer) one shard at a time, resuming after the last finished shard.
``train_on_cache`` is a thin layer over :class:`Trainer` that reads the cache through the
shuffling reader.  The readouts that run a model for the analysis live here too (logit lens,
steering); the analysis runner is :func:`difflens.methods.dictionary.analysis.analyze`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from difflens.errors import DifflensError
from difflens.io.artifacts import (
    atomic_write_bytes,
    check_same_settings,
    read_json,
    read_optional_json,
    write_json,
)
from difflens.methods.dictionary.cache import (
    DTYPES,
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    ActivationCache,
    RunningStats,
    Sequence,
    act_key,
    check_cache_matches,
    model_key,
    sha256_hex,
    shard_files,
)
from difflens.methods.dictionary.config import (
    CacheConfig,
    DictionaryConfig,
    TrainConfig,
    default_width,
)

if TYPE_CHECKING:
    from difflens.methods.dictionary.train import TrainResult
    from difflens.models.pair import ModelPair

TRAINING_FILE = "training.json"
TRAIN_LOG_FILE = "train_log.json"


# ---- building the cache ---------------------------------------------------------------------
class CacheWriter:
    """Writes shards in order and the manifest after each; resumes a matching partial cache.

    ``header``: what identifies the cache (models, layers, dtype, corpus settings, a hash of the
    token ids, planned sizes).  An existing manifest with another header is refused (one line)
    rather than mixed with this run.
    """

    def __init__(self, path: str | Path, header: dict[str, Any]) -> None:
        self.path = Path(path)
        self.header = json.loads(json.dumps(header))  # tuples -> lists, as written
        self.dtype = DTYPES[header["dtype"]]
        manifest_path = self.path / MANIFEST
        if manifest_path.exists():
            old = read_json(manifest_path)
            recorded = {"format": old.get("format"), **(old.get("header") or {})}
            check_same_settings(self.path, recorded, {"format": FORMAT, **self.header},
                                "a different activation cache")
            self.entries: list[dict[str, Any]] = old["shards"]
            self.stats = {int(k): RunningStats.from_json(v) for k, v in old["stats"].items()}
            self._check_finished()
        else:
            self.path.mkdir(parents=True, exist_ok=True)
            self.entries = []
            self.stats = {int(layer): RunningStats(2, header["d_model"])
                          for layer in header["layers"]}

    @property
    def next_shard(self) -> int:
        """Index of the first unfinished shard (shards are written in order)."""
        return len(self.entries)

    def _check_finished(self) -> None:
        for entry in self.entries:
            for name, size in ((entry["file"], entry["bytes"]), (entry["meta_file"], None)):
                file = self.path / name
                if not file.is_file() or (size is not None and file.stat().st_size != size):
                    raise DifflensError(
                        f"finished cache shard {file} is missing or truncated; delete "
                        f"{self.path} and re-run `difflens cache` to rebuild it")

    def write_shard(self, acts: dict[int, Tensor], seq: Tensor, pos: Tensor,
                    sequences: list[Sequence]) -> dict[str, Any]:
        """Write shard ``next_shard``: ``acts`` layer -> ``(N, 2, d)`` float32, ``seq``/``pos``
        ``(N,)``, its sequences.  Statistics are taken before any bf16 rounding."""
        from safetensors.torch import save

        index = self.next_shard
        tensor_file, meta_file = shard_files(index)
        tensors = {act_key(layer): a.to(self.dtype).contiguous() for layer, a in acts.items()}
        tensors.update(seq=seq.to(torch.int64).contiguous(), pos=pos.to(torch.int64).contiguous())
        # One metadata key: safetensors writes several in hash-map order, which would make
        # byte-identical shards (and their sha256) differ between runs.
        blob = save(tensors, metadata={"format": f"{FORMAT} shard {index}"})
        meta = {"shard": index, "sequences": [s._asdict() for s in sequences]}
        meta_blob = (json.dumps(meta, separators=(",", ":")) + "\n").encode()
        atomic_write_bytes(self.path / tensor_file, blob)
        atomic_write_bytes(self.path / meta_file, meta_blob)
        for layer, a in acts.items():
            self.stats[layer].update(a)
        entry = {"index": index, "file": tensor_file, "bytes": len(blob),
                 "sha256": sha256_hex(blob), "meta_file": meta_file,
                 "meta_sha256": sha256_hex(meta_blob), "rows": int(seq.numel()),
                 "row_start": sum(e["rows"] for e in self.entries),
                 "seq_start": sequences[0].seq, "seq_end": sequences[-1].seq + 1}
        self.entries.append(entry)
        self._write_manifest(complete=False)  # from here on the shard counts as finished
        return entry

    def finish(self) -> None:
        """Mark the cache complete."""
        self._write_manifest(complete=True)

    def _write_manifest(self, complete: bool) -> None:
        write_json(self.path / MANIFEST, {
            "format": FORMAT, "format_version": FORMAT_VERSION, "header": self.header,
            "complete": complete, "shards": self.entries,
            "stats": {str(k): v.to_json() for k, v in self.stats.items()},
        })


def tokenize_corpus(tokenizer: Any, texts: list[str], config: CacheConfig
                    ) -> list[tuple[int, list[int], int]]:
    """``(text index, token ids cut to max_tokens, first cached position)`` per kept text."""
    from difflens.data.tokenize import encode

    bos = tokenizer.bos_token_id
    out = []
    for index, text in enumerate(texts):
        ids = encode(tokenizer, text)[: config.max_tokens]
        skip_bos = not config.keep_bos and bos is not None and ids and ids[0] == bos
        first = max(config.min_position, 1 if skip_bos else 0)
        if len(ids) > first:
            out.append((index, ids, first))
    if not out:
        raise DifflensError(f"no text of {config.corpus} has a token past position "
                            f"{config.min_position}; use longer texts or a smaller --min-position")
    return out


def plan_shards(rows: list[int], tokens_per_shard: int) -> list[tuple[int, int]]:
    """Sequence ranges ``[lo, hi)`` of each shard: whole sequences, closed at >= N rows."""
    plan, lo, count = [], 0, 0
    for i, n in enumerate(rows):
        count += n
        if count >= tokens_per_shard:
            plan.append((lo, i + 1))
            lo, count = i + 1, 0
    if lo < len(rows):
        plan.append((lo, len(rows)))
    return plan


def shard_activations(pair: ModelPair, seqs: list[Sequence], layers: list[int],
                      batch_size: int) -> dict[int, Tensor]:
    """``layer -> (N, 2, d)`` float32 rows of ``seqs`` (in their order), base then ft.

    Batches are formed from length-sorted sequences (less padding) and right-padded; padding is
    masked out and never stored.
    """
    from difflens.collect import layer_activations
    from difflens.data.padding import pad_id, pad_rows
    from difflens.models.pair import BASE, FT

    d = pair.arch(FT).hidden_size
    n_rows = sum(s.end - s.start for s in seqs)
    acts = {layer: torch.empty(n_rows, 2, d) for layer in layers}
    pad = pad_id(pair.tokenizer)
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i].tokens))
    for lo in range(0, len(order), batch_size):
        batch = [seqs[i] for i in order[lo: lo + batch_size]]
        ids, mask = pad_rows([s.tokens for s in batch], pad)
        full = bool(mask.all())  # no padding: let attention take its unmasked fast path
        for m, side in enumerate((BASE, FT)):
            out = layer_activations(pair, side, ids, layers, None if full else mask)
            for layer in layers:
                host = out[layer].cpu()  # one device->host copy per batch, not per sequence
                for row, s in enumerate(batch):
                    acts[layer][s.start: s.end, m] = host[row, s.first_position: len(s.tokens)]
    return acts


def build_cache(pair: ModelPair, config: CacheConfig, out: str | Path, *, progress: bool = True,
                on_shard: Callable[[int], None] | None = None) -> ActivationCache:
    """Write (or finish) the activation cache of ``pair`` over ``config.corpus`` into ``out``.

    Finished shards of an interrupted run are kept and not recomputed.  ``on_shard(index)`` is
    called after each shard is final (for progress hooks and tests).
    """
    from tqdm.auto import tqdm

    from difflens.data.corpus import load_texts
    from difflens.models.pair import FT

    config.validate()
    layers = pair.resolve_layers(list(config.layers))
    texts = load_texts(config.corpus, limit=config.n_texts, tokenizer=pair.tokenizer)
    kept = tokenize_corpus(pair.tokenizer, texts, config)
    plan = plan_shards([len(ids) - first for _, ids, first in kept], config.tokens_per_shard)
    digest = sha256_hex(json.dumps(kept, separators=(",", ":")).encode())
    identity = {k: v for k, v in asdict(config).items() if k not in ("batch_size", "layers")}
    header = {
        **identity, "layers": layers, "num_layers": pair.num_layers,
        "d_model": pair.arch(FT).hidden_size,
        "models": {"base": model_key(pair.base_id), "finetuned": model_key(pair.ft_id)},
        "n_texts_read": len(texts), "n_sequences": len(kept), "n_shards": len(plan),
        "n_rows": sum(len(ids) - first for _, ids, first in kept), "tokens_sha256": digest,
    }
    writer = CacheWriter(out, header)
    done_rows = sum(e["rows"] for e in writer.entries)
    bar = tqdm(total=header["n_rows"], initial=done_rows, unit="tok", desc="caching activations",
               disable=not progress or None)
    try:
        for index in range(writer.next_shard, len(plan)):
            lo, hi = plan[index]
            seqs, start = [], 0
            for g in range(lo, hi):
                text, ids, first = kept[g]
                seqs.append(Sequence(g, text, start, start + len(ids) - first, first, ids))
                start += len(ids) - first
            acts = shard_activations(pair, seqs, layers, config.batch_size)
            seq = torch.cat([torch.full((s.end - s.start,), s.seq) for s in seqs])
            pos = torch.cat([torch.arange(s.first_position, len(s.tokens)) for s in seqs])
            writer.write_shard(acts, seq, pos, seqs)
            bar.update(start)
            if on_shard is not None:
                on_shard(index)
    finally:
        bar.close()
    writer.finish()
    return ActivationCache(out)


# ---- training -------------------------------------------------------------------------------
@dataclass
class ReadConfig:
    """How training reads the cache."""

    val_fraction: float = 0.1  # share of sequences held out for validation / analysis
    split_seed: int = 0  # seed of the train/validation split (analysis reuses it)
    shuffle_seed: int = 0  # seed of the shard order and the shuffle buffer
    buffer_rows: int = 1 << 16  # shuffle buffer size in rows
    chunk_rows: int = 4096  # rows per chunk handed to the trainer


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
    """
    from difflens.methods.dictionary.crosscoder import Crosscoder, DiffSAE
    from difflens.methods.dictionary.train import Trainer

    if kind not in ("crosscoder", "diff_sae"):
        raise DifflensError(f"unknown dictionary kind {kind!r}; use crosscoder or diff_sae")
    read = read or ReadConfig()
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
    train_dict = {k: v for k, v in train.to_dict().items() if k not in _NOT_IDENTITY}
    record = {"kind": kind, "cache": str(cache.path.resolve()), "layer": layer,
              "models": cache.models, "read": asdict(read), "dictionary": config.to_dict(),
              "train": train_dict}
    out = Path(out)
    old = read_optional_json(out / TRAINING_FILE)
    if old is not None:
        check_same_settings(out, old, record, "another training run")
    else:
        write_json(out / TRAINING_FILE, record)
    reader = cache.reader(layer, "train", val_fraction=read.val_fraction,
                          split_seed=read.split_seed, seed=read.shuffle_seed,
                          buffer_rows=read.buffer_rows, chunk_rows=read.chunk_rows, epochs=None)
    result = Trainer(model, train, out).fit(reader)
    write_json(out / TRAIN_LOG_FILE, result._asdict())
    return result


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
