"""Activation cache: paired (base, ft) activations of a corpus on disk, written and read here.

A cache directory::

    manifest.json            what the cache is (models, layers, dtype, corpus settings), one
                             entry per finished shard (sizes, sha256) and the running per-model
                             statistics; rewritten atomically after every shard
    shard_00000.safetensors  acts.<layer> (N, 2, d): [:, 0] base, [:, 1] ft (float32 or
                             bfloat16); seq (N,) int64 global sequence index; pos (N,) int64
                             position of the row within its sequence
    shard_00000.json         the shard's sequences: text index, rows [start, end) in the shard,
                             first cached position and the token ids of the whole truncated text

A *sequence* is one text cut to ``max_tokens``; a shard holds whole sequences (never half of
one), so the text window around any row is rebuilt from its shard's JSON alone and the
train/validation split (by sequence) is a row filter per shard.  The writer
(:class:`~difflens.methods.dictionary.building.CacheWriter`) and the readers here share the
definitions below, so the format cannot drift between them.  Every file is written atomically;
a shard counts as finished only once the manifest lists it, and every read checks the sha256.
A cache built under torchrun (:mod:`~difflens.methods.dictionary.building`) has the same files:
while it is under way the manifest also records ``world_size`` and each rank lists its
finished shards in ``progress.rank<r>.json``; both go once the manifest is complete.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

from difflens.errors import DifflensError
from difflens.io.artifacts import read_json
from difflens.methods.dictionary.activation_stats import RunningStats

FORMAT = "difflens-activation-cache"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
DATA_SPLITS = ("stream", "shards")  # how data-parallel ranks share a reader's rows


def shard_files(index: int) -> tuple[str, str]:
    """File names (tensors, sequences) of shard ``index``."""
    return f"shard_{index:05d}.safetensors", f"shard_{index:05d}.json"


def act_key(layer: int) -> str:
    return f"acts.{layer}"


class Sequence(NamedTuple):
    """One cached sequence, as listed in its shard's JSON."""

    seq: int  # global sequence index (0 .. n_sequences-1)
    text: int  # index of the text in the corpus as loaded
    start: int  # first row of the sequence in its shard
    end: int  # one past its last row
    first_position: int  # position (in ``tokens``) of row ``start``
    tokens: list[int]  # token ids of the whole truncated text (BOS included)


class ShardData(NamedTuple):
    """Tensors of one verified shard."""

    acts: dict[int, Tensor]  # layer -> (N, 2, d) in the storage dtype
    seq: Tensor  # (N,) int64
    pos: Tensor  # (N,) int64


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ActivationCache:
    """A finished activation cache, opened for reading (every shard read is sha256-checked)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        manifest_path = self.path / MANIFEST
        if not manifest_path.is_file():
            raise DifflensError(f"{self.path} is not an activation cache (no {MANIFEST}); "
                                "create one with `difflens cache --out DIR`")
        manifest = read_json(manifest_path)
        version = manifest.get("format_version")
        if manifest.get("format") != FORMAT or not isinstance(version, int):
            raise DifflensError(f"{manifest_path} is not a difflens activation-cache manifest")
        if version > FORMAT_VERSION:
            raise DifflensError(f"{self.path} has cache format {version}; this difflens reads "
                                f"up to {FORMAT_VERSION}: upgrade difflens")
        self.header: dict[str, Any] = manifest["header"]
        self.shards: list[dict[str, Any]] = manifest["shards"]
        if not manifest.get("complete"):
            world = int(manifest.get("world_size", 1))
            done = (f"{len(self.shards)} of {self.header['n_shards']} shards" if world == 1
                    else f"started by torchrun with {world} processes")
            launch = "" if world == 1 else f"`torchrun --nproc_per_node {world}` "
            raise DifflensError(
                f"activation cache {self.path} is incomplete ({done}); re-run the same "
                f"{launch}`difflens cache` command to finish it")
        self._stats = manifest["stats"]
        self._sequence_rows: Tensor | None = None

    # ---- description ------------------------------------------------------------------------
    @property
    def layers(self) -> list[int]:
        return [int(layer) for layer in self.header["layers"]]

    @property
    def d_model(self) -> int:
        return int(self.header["d_model"])

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.header["dtype"]]

    @property
    def models(self) -> dict[str, str]:
        """``{"base": id, "finetuned": id}`` as recorded when the cache was written."""
        return dict(self.header["models"])

    @property
    def n_rows(self) -> int:
        return sum(int(e["rows"]) for e in self.shards)

    @property
    def n_sequences(self) -> int:
        return int(self.header["n_sequences"])

    def stats(self, layer: int) -> RunningStats:
        """Running statistics of ``layer`` over the whole cache."""
        return RunningStats.from_json(self._stats[str(self.resolve_layer(layer))])

    def resolve_layer(self, layer: int | float | None) -> int:
        """A layer of this cache from an index / relative depth; ``None`` if there is only one."""
        n, layers = int(self.header["num_layers"]), self.layers
        if layer is None:
            if len(layers) == 1:
                return layers[0]
            raise DifflensError(f"the cache {self.path} holds layers "
                                f"{', '.join(map(str, layers))}; choose one with --layer")
        in_range = 0.0 <= layer <= 1.0 if isinstance(layer, float) else -n <= int(layer) < n
        if not in_range:  # never wrap round to another layer
            raise DifflensError(
                f"layer {layer} is out of range: the models of {self.path} have {n} layers; "
                f"use an index in [-{n}, {n - 1}] or a relative depth in [0, 1] (cached: "
                f"{', '.join(map(str, layers))})")
        index = round(layer * (n - 1)) if isinstance(layer, float) else int(layer) % n
        if index not in layers:
            raise DifflensError(
                f"the cache {self.path} holds layer(s) {', '.join(map(str, layers))}, not "
                f"layer {index}; build a cache at layer {index} or pass --layer "
                f"{layers[0]}")
        return index

    # ---- verified reads ---------------------------------------------------------------------
    def _verified(self, name: str, sha: str) -> bytes:
        file = self.path / name
        try:
            data = file.read_bytes()
        except OSError as exc:
            raise DifflensError(f"cache shard {file} is unreadable ({exc.strerror}); delete "
                                f"{self.path} and re-run `difflens cache`") from None
        if sha256_hex(data) != sha:
            raise DifflensError(
                f"cache shard {file} is corrupt (sha256 differs from {MANIFEST}); delete "
                f"{self.path} and re-run `difflens cache` to rebuild it")
        return data

    def read_shard(self, index: int, layers: list[int] | None = None) -> ShardData:
        """Tensors of shard ``index`` (only ``layers``, default all), checked against the
        manifest's sha256."""
        from safetensors.torch import load

        entry = self.shards[index]
        tensors = load(self._verified(entry["file"], entry["sha256"]))
        wanted = self.layers if layers is None else layers
        return ShardData({layer: tensors[act_key(layer)] for layer in wanted},
                         tensors["seq"], tensors["pos"])

    def sequences(self, index: int) -> list[Sequence]:
        """The sequences of shard ``index`` (checked against the manifest's sha256)."""
        entry = self.shards[index]
        meta = json.loads(self._verified(entry["meta_file"], entry["meta_sha256"]))
        return [Sequence(**s) for s in meta["sequences"]]

    def sequence_rows(self) -> Tensor:
        """``(n_sequences,)`` cached rows per sequence."""
        if self._sequence_rows is None:
            rows = torch.zeros(self.n_sequences, dtype=torch.int64)
            for index in range(len(self.shards)):
                for s in self.sequences(index):
                    rows[s.seq] = s.end - s.start
            self._sequence_rows = rows
        return self._sequence_rows

    # ---- splits and readers -----------------------------------------------------------------
    def split_mask(self, split: str, val_fraction: float = 0.1, seed: int = 0) -> Tensor:
        """``(n_sequences,)`` bool: the sequences of ``split`` ("train", "val" or "all")."""
        return split_sequences(self.n_sequences, split, val_fraction, seed)

    def reader(self, layer: int | float | None = None, split: str = "train", **kw: Any
               ) -> CacheReader:
        """A :class:`CacheReader` over ``layer`` and ``split`` (keywords: see the class)."""
        return CacheReader(self, self.resolve_layer(layer), split, **kw)


def split_sequences(n: int, split: str, val_fraction: float, seed: int) -> Tensor:
    """Seeded split of ``n`` sequences: ``round(val_fraction · n)`` of them (at least one, and
    not all, when ``0 < val_fraction < 1`` and ``n ≥ 2``) are validation."""
    if split not in ("train", "val", "all"):
        raise DifflensError(f"unknown split {split!r}; use train, val or all")
    if not 0.0 <= val_fraction < 1.0:
        raise DifflensError(f"validation fraction must be in [0, 1), got {val_fraction}")
    if split == "all":
        return torch.ones(n, dtype=torch.bool)
    n_val = round(val_fraction * n)
    if val_fraction > 0 and n >= 2:
        n_val = min(max(n_val, 1), n - 1)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    val = torch.zeros(n, dtype=torch.bool)
    val[perm[:n_val]] = True
    return val if split == "val" else ~val


class IndexedChunk(NamedTuple):
    """Rows with their place in the cache (from ``CacheReader(with_index=True)``)."""

    x: Tensor  # (n, 2, d) float32
    shard: Tensor  # (n,) int64
    row: Tensor  # (n,) int64 row within the shard


class CacheReader:
    """Chunks ``(n, 2, d)`` of one layer and split, shuffled through a seeded buffer.

    Each epoch visits the shards in a seeded random order and pushes their rows through a buffer
    of ``buffer_rows`` rows: once it is full, each incoming shard's rows replace as many random
    buffered rows, which leave; the rest leaves, permuted, at the end of the epoch - so every
    row of the split comes out exactly once per epoch, and the order depends only on ``seed``
    and the epoch.  Iterating again replays the same stream.  Memory: ``buffer_rows`` plus one
    shard, in the storage dtype; chunks are converted to ``dtype`` (float32) on the way out.

    ``epochs=None`` repeats forever (training stops by step count).  ``shuffle=False`` reads
    shards and rows in cache order.  ``with_index=True`` yields :class:`IndexedChunk`.  The
    reader is also a callable ``reader(start_row)`` for the trainer's resume, which skips whole
    epochs without reading them.

    ``data_split="shards"`` with ``world_size`` W > 1 (data-parallel training): this rank
    reads only its shards of each epoch (:func:`assign_shards` of the seeded epoch order, the
    same on every rank) through a buffer seeded by (seed, epoch, rank); over the W readers
    every row of the split comes out once per epoch.  Rows and ``start_row`` then count this
    rank's own stream, whose epochs differ in size by rank and epoch (:meth:`epoch_rows`).
    With W = 1 it is the ``"stream"`` reader.
    """

    def __init__(self, cache: ActivationCache, layer: int, split: str = "train", *,
                 val_fraction: float = 0.1, split_seed: int = 0, shuffle: bool = True,
                 seed: int = 0, buffer_rows: int = 1 << 16, chunk_rows: int = 4096,
                 epochs: int | None = 1, with_index: bool = False,
                 dtype: torch.dtype = torch.float32, data_split: str = "stream", rank: int = 0,
                 world_size: int = 1) -> None:
        if buffer_rows < 0 or chunk_rows < 1:
            raise DifflensError("buffer_rows must be >= 0 and chunk_rows >= 1")
        if data_split not in DATA_SPLITS or not 0 <= rank < world_size:
            raise DifflensError(f"bad data split {data_split!r}, rank {rank} of {world_size}")
        self.cache, self.layer = cache, layer
        self.mask = cache.split_mask(split, val_fraction, split_seed)
        self.shuffle, self.seed, self.buffer_rows = shuffle, seed, buffer_rows
        self.chunk_rows, self.epochs, self.with_index, self.dtype = (
            chunk_rows, epochs, with_index, dtype)
        self.split = split
        # (rank, W) when this rank reads its own shards; None: the whole stream (W = 1 too).
        self.ranks = (rank, world_size) if data_split == "shards" and world_size > 1 else None
        self._shard_rows: list[int] | None = None
        if self.ranks is not None and (filled := sum(map(bool, self.shard_rows))) < world_size:
            raise DifflensError(  # a rank without rows: every rank needs B / W rows a step
                f"the {split} split of {cache.path} has rows in {filled} shard(s), fewer than "
                f"the {world_size} ranks; use --data-split stream or smaller --tokens-per-shard")

    @property
    def rows_per_epoch(self) -> int:
        """Rows of the split (one epoch)."""
        return int(self.cache.sequence_rows()[self.mask].sum())

    @property
    def shard_rows(self) -> list[int]:
        """Rows of the split in each shard (from the shards' JSON, not their tensors)."""
        if self._shard_rows is None:
            mask = self.mask.tolist()
            self._shard_rows = [sum(s.end - s.start for s in self.cache.sequences(i)
                                    if mask[s.seq]) for i in range(len(self.cache.shards))]
        return self._shard_rows

    def epoch_shards(self, epoch: int) -> tuple[list[int], torch.Generator]:
        """The shards this reader reads in ``epoch``, in reading order, and the generator of
        its shuffle buffer (for ``"stream"`` the one that drew the order, continued)."""
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        n = len(self.cache.shards)
        order = torch.randperm(n, generator=gen).tolist() if self.shuffle else list(range(n))
        if self.ranks is None:
            return order, gen
        rank, size = self.ranks  # each rank's buffer draws from its own seed (seed, epoch, rank)
        return assign_shards(order, self.shard_rows, size)[rank], torch.Generator().manual_seed(
            ((self.seed * 1_000_003 + epoch) * 1_000_033 + rank) % (1 << 63))

    def epoch_rows(self, epoch: int) -> int:
        """Rows this reader yields in ``epoch`` (all of the split unless it reads shards)."""
        if self.ranks is None:
            return self.rows_per_epoch
        return sum(self.shard_rows[i] for i in self.epoch_shards(epoch)[0])

    def __iter__(self) -> Iterator[Any]:
        return self(0)

    def __call__(self, start_row: int = 0) -> Iterator[Any]:
        """The stream from row ``start_row`` on (whole epochs before it are not read)."""
        per_epoch = self.rows_per_epoch
        if per_epoch == 0:
            raise DifflensError(f"the {self.split} split of {self.cache.path} is empty; use a "
                                "larger cache or another validation fraction")
        epoch, skip = divmod(start_row, per_epoch) if self.ranks is None else (0, start_row)
        while self.ranks is not None and skip >= (rows := self.epoch_rows(epoch)):
            epoch, skip = epoch + 1, skip - rows  # this rank's epochs differ in size
        while self.epochs is None or epoch < self.epochs:
            for chunk in self._epoch(epoch):
                n = chunk[0].shape[0]
                if skip >= n:
                    skip -= n
                    continue
                chunk, skip = [t[skip:] for t in chunk], 0
                x = chunk[0].to(self.dtype)
                yield IndexedChunk(x, chunk[1], chunk[2]) if self.with_index else x
            epoch += 1

    def _epoch(self, epoch: int) -> Iterator[list[Tensor]]:
        order, gen = self.epoch_shards(epoch)
        buffer: list[Tensor] | None = None
        for index, data in self._prefetched(order):
            take = self.mask[data.seq]
            keep = take.nonzero().squeeze(1)
            acts = data.acts[self.layer]
            rows = [acts if bool(take.all()) else acts[keep], torch.full_like(keep, index), keep]
            if not self.shuffle:
                yield from _split_rows(rows, self.chunk_rows)
                continue
            size = buffer[0].shape[0] if buffer is not None else 0
            if buffer is not None and size == self.buffer_rows >= rows[0].shape[0]:
                # Full buffer: the new rows take the places of as many random buffered rows,
                # which leave (two copies of the new rows' size, not of the whole buffer).
                slots = torch.randperm(size, generator=gen)[: rows[0].shape[0]]
                leaving = [t[slots] for t in buffer]
                for t, new in zip(buffer, rows, strict=True):
                    t[slots] = new
                yield from _split_rows(leaving, self.chunk_rows)
                continue
            if buffer is not None:  # filling up (or a shard larger than the buffer)
                rows = [torch.cat(p) for p in zip(buffer, rows, strict=True)]
            else:  # the buffer is written in place: never into the shard's own memory
                rows = [t.clone() for t in rows]
            buffer = rows
            excess = buffer[0].shape[0] - self.buffer_rows
            if excess > 0:
                perm = torch.randperm(buffer[0].shape[0], generator=gen)
                yield from _split_rows([t[perm[:excess]] for t in buffer], self.chunk_rows)
                buffer = [t[perm[excess:]] for t in buffer]
        if buffer is not None and buffer[0].shape[0]:
            perm = torch.randperm(buffer[0].shape[0], generator=gen)
            yield from _split_rows([t[perm] for t in buffer], self.chunk_rows)

    def _prefetched(self, order: list[int]) -> Iterator[tuple[int, ShardData]]:
        """Shards in ``order``, the next one read and verified in a background thread while
        the current one is consumed (file reads and sha256 release the GIL)."""
        from concurrent.futures import ThreadPoolExecutor

        if not order:
            return
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(self.cache.read_shard, order[0], [self.layer])
            for i, index in enumerate(order):
                data = pending.result()
                if i + 1 < len(order):
                    pending = pool.submit(self.cache.read_shard, order[i + 1], [self.layer])
                yield index, data


def assign_shards(order: list[int], rows: list[int], size: int) -> list[list[int]]:
    """Shards of one epoch per rank, balanced by rows: in ``order`` (the seeded epoch order),
    each shard holding rows of the split goes to the rank with the fewest rows so far (the
    lowest rank on a tie), so the ranks' rows differ by at most one shard's; shards without
    rows go nowhere.  ``rows``: split rows per shard.  Each rank keeps the epoch order."""
    loads, mine = [0] * size, [[] for _ in range(size)]
    for index in order:
        if rows[index]:
            rank = loads.index(min(loads))
            loads[rank] += rows[index]
            mine[rank].append(index)
    return mine


def _split_rows(tensors: list[Tensor], rows: int) -> Iterator[list[Tensor]]:
    for start in range(0, tensors[0].shape[0], rows):
        yield [t[start : start + rows] for t in tensors]


def model_key(source: str | Path | None) -> str:
    """How a model is named in a cache: an existing path as its absolute path, the embedded base
    as ``embedded`` (also when given by its hub id), anything else verbatim."""
    from difflens.models.embedded import EMBEDDED_BASE_ID

    text = "embedded" if source is None else str(source)
    if text in ("embedded", EMBEDDED_BASE_ID):
        return "embedded"
    path = Path(text).expanduser()
    return str(path.resolve()) if path.exists() else text


def check_cache_matches(cache: ActivationCache, base: str | None = None,
                        finetuned: str | None = None, layer: int | float | None = None) -> None:
    """One-line error unless the given models (and layer) are the ones ``cache`` is from."""
    for role, given in (("base", base), ("finetuned", finetuned)):
        recorded = cache.models.get(role)
        if given is not None and model_key(given) != recorded:
            raise DifflensError(
                f"the cache {cache.path} was built from {role} model {recorded}, not "
                f"{model_key(given)}; build a cache for this pair with `difflens cache`")
    if layer is not None:
        cache.resolve_layer(layer)
