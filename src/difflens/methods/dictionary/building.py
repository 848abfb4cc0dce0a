"""Building the activation cache: forwards → kept rows on the device → shards written behind.

Per batch of sequences, both models run (stopped at the deepest cached layer); the kept rows
(padding and the skipped positions dropped) are gathered on the device by one ``index_select``
per layer, their float64 statistics are taken there, and one device→host copy per batch moves
them, already in the storage dtype, into the shard's host tensors.  A finished shard is handed
to a background writer thread (serialise, sha256, write + fsync, then the manifest) while the
next shard's forwards run: one write in flight, so host memory stays at about two shards; the
writer's errors are raised in the main thread, and the manifest (or a rank's progress file) is
updated strictly after the shard's files are final.  The files are byte-identical to writing
each shard serially (``tests/test_dictionary_cache.py`` checks the sha256).

Under ``torchrun`` (:mod:`difflens.distributed`, more than one rank) shards are planned exactly
as alone (whole sequences, the same contents whatever the world size) and rank r writes the
contiguous range ``shard_range(n_shards, r, W)`` of them.  Rank 0 first checks the directory
and records the world size in an incomplete manifest; each rank records its finished shards
(entry and that shard's statistics) in its own ``progress.rank<r>.json`` (atomic), so a rerun
with the same world size resumes every rank, and one with another world size is refused in one
line.  At the end rank 0 gathers the entries, merges the per-shard statistics in shard order
(:meth:`RunningStats.merge`, as a single process does after each shard: the same float64
operations in the same order) and writes the one ``manifest.json`` in the plain format; the
progress files are then removed.  The output directory must be one that every rank sees.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import Tensor

from difflens import distributed as dd
from difflens.errors import DifflensError
from difflens.io.artifacts import atomic_write_bytes, check_same_settings, read_json, write_json
from difflens.methods.dictionary.cache import (
    DTYPES,
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    ActivationCache,
    RunningStats,
    Sequence,
    act_key,
    model_key,
    sha256_hex,
    shard_files,
)
from difflens.methods.dictionary.config import CacheConfig

if TYPE_CHECKING:
    from difflens.models.pair import ModelPair

PROGRESS = "progress.rank{rank}.json"  # a rank's finished shards in a torchrun build


class ShardRows(NamedTuple):
    """One shard, ready to write."""

    acts: dict[int, Tensor]  # layer -> (N, 2, d) host tensor in the storage dtype, contiguous
    seq: Tensor  # (N,) int64 global sequence index of each row
    pos: Tensor  # (N,) int64 position of each row within its sequence
    sequences: list[Sequence]
    stats: dict[int, RunningStats]  # layer -> this shard's statistics (float32 rows, pre-cast)


# ---- the writer -----------------------------------------------------------------------------
class CacheWriter:
    """Writes shards and records them: alone in the manifest after each shard (which resumes a
    matching partial cache), under torchrun in this rank's progress file.

    ``header``: what identifies the cache (models, layers, dtype, corpus settings, a hash of the
    token ids, planned sizes).  An existing manifest with another header is refused (one line)
    rather than mixed with this run.  ``rank``: ``(r, W)`` for rank r of a W-process build
    (its directory was checked by :func:`_prepare_distributed` on rank 0); None alone.
    """

    def __init__(self, path: str | Path, header: dict[str, Any],
                 rank: tuple[int, int] | None = None) -> None:
        self.path = Path(path)
        self.header = json.loads(json.dumps(header))  # tuples -> lists, as written
        self.dtype = DTYPES[header["dtype"]]
        self.rank = rank
        self.entries: list[dict[str, Any]] = []
        # alone: running totals over the shards so far; a rank: its shards' own statistics
        self.stats = _empty_stats(self.header)
        self.shard_stats: dict[int, dict[int, RunningStats]] = {}
        if rank is not None:
            self._load_progress()
            return
        manifest_path = self.path / MANIFEST
        if manifest_path.exists():
            old = read_json(manifest_path)
            _check_header(self.path, old, self.header)
            recorded = int(old.get("world_size", 1))
            if recorded != 1 and not old.get("complete"):
                raise DifflensError(_world_mismatch(self.path, recorded, 1))
            self.entries = old["shards"]
            self.stats = {int(k): RunningStats.from_json(v) for k, v in old["stats"].items()}
            _check_finished(self.path, self.entries)
        else:
            self.path.mkdir(parents=True, exist_ok=True)
        _remove_temporaries(self.path)  # of a run killed mid-write (never part of the cache)

    @property
    def next_shard(self) -> int:
        """Index of the first unfinished shard (alone, shards are written in order)."""
        return len(self.entries)

    def write_shard(self, acts: dict[int, Tensor], seq: Tensor, pos: Tensor,
                    sequences: list[Sequence]) -> dict[str, Any]:
        """Write shard ``next_shard`` from float32 ``acts`` layer -> ``(N, 2, d)`` on the host,
        ``seq``/``pos`` ``(N,)`` and its sequences (the straightforward serial path; statistics
        are taken before any bf16 rounding)."""
        stats = {layer: RunningStats.of(a) for layer, a in acts.items()}
        rows = ShardRows({layer: a.to(self.dtype).contiguous() for layer, a in acts.items()},
                         seq, pos, sequences, stats)
        return self.write(self.next_shard, rows)

    def write(self, index: int, shard: ShardRows, row_start: int | None = None
              ) -> dict[str, Any]:
        """Write shard ``index``'s files, then record it (safe to call from the writer thread:
        the main thread does not touch this writer while a write is in flight)."""
        from safetensors.torch import save

        tensor_file, meta_file = shard_files(index)
        tensors = {act_key(layer): a for layer, a in shard.acts.items()}
        tensors.update(seq=shard.seq.to(torch.int64).contiguous(),
                       pos=shard.pos.to(torch.int64).contiguous())
        # One metadata key: safetensors writes several in hash-map order, which would make
        # byte-identical shards (and their sha256) differ between runs.
        blob = save(tensors, metadata={"format": f"{FORMAT} shard {index}"})
        meta = {"shard": index, "sequences": [s._asdict() for s in shard.sequences]}
        meta_blob = (json.dumps(meta, separators=(",", ":")) + "\n").encode()
        atomic_write_bytes(self.path / tensor_file, blob)
        atomic_write_bytes(self.path / meta_file, meta_blob)
        if row_start is None:  # alone, in order: the rows of the shards before
            row_start = sum(e["rows"] for e in self.entries)
        entry = {"index": index, "file": tensor_file, "bytes": len(blob),
                 "sha256": sha256_hex(blob), "meta_file": meta_file,
                 "meta_sha256": sha256_hex(meta_blob), "rows": int(shard.seq.numel()),
                 "row_start": row_start, "seq_start": shard.sequences[0].seq,
                 "seq_end": shard.sequences[-1].seq + 1}
        self.entries.append(entry)
        if self.rank is None:
            for layer, part in shard.stats.items():
                self.stats[layer].merge(part)
            self._write_manifest(complete=False)  # from here on the shard counts as finished
        else:
            self.shard_stats[index] = shard.stats
            self._write_progress()
        return entry

    def finish(self) -> None:
        """Mark the cache complete."""
        self._write_manifest(complete=True)

    def _write_manifest(self, complete: bool) -> None:
        write_manifest(self.path, self.header, self.entries, self.stats, complete)

    # ---- a rank's progress --------------------------------------------------------------------
    @property
    def progress_file(self) -> Path:
        assert self.rank is not None
        return self.path / PROGRESS.format(rank=self.rank[0])

    def _load_progress(self) -> None:
        file = self.progress_file
        if not file.exists():
            return
        data = read_json(file, what="cache progress file",
                         fix=f"delete {self.path} and re-run `difflens cache`")
        if int(data.get("world_size", 0)) != self.rank[1]:  # the manifest said otherwise
            raise DifflensError(_world_mismatch(self.path, int(data.get("world_size", 0)),
                                                self.rank[1]))
        self.entries = data["shards"]
        self.shard_stats = {int(i): {int(layer): RunningStats.from_json(s)
                                     for layer, s in per.items()}
                            for i, per in data["stats"].items()}
        _check_finished(self.path, self.entries)

    def _write_progress(self) -> None:
        data = {"world_size": self.rank[1], "rank": self.rank[0], "shards": self.entries,
                "stats": {str(i): {str(layer): s.to_json() for layer, s in per.items()}
                          for i, per in self.shard_stats.items()}}
        atomic_write_bytes(self.progress_file, json.dumps(data, separators=(",", ":")).encode())

    def records(self) -> tuple[list[dict[str, Any]], dict[int, dict[int, dict[str, Any]]]]:
        """This rank's finished entries and per-shard statistics (JSON-ready, for the gather)."""
        return self.entries, {i: {layer: s.to_json() for layer, s in per.items()}
                              for i, per in self.shard_stats.items()}


def write_manifest(path: Path, header: dict[str, Any], entries: list[dict[str, Any]],
                   stats: dict[int, RunningStats], complete: bool,
                   world_size: int | None = None) -> None:
    """The manifest (atomic).  ``world_size`` is recorded only while a torchrun build is under
    way; a finished cache's manifest has the same keys however it was built."""
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "header": header,
                "complete": complete, "shards": entries,
                "stats": {str(k): v.to_json() for k, v in stats.items()}}
    if world_size is not None:
        manifest["world_size"] = world_size
    write_json(path / MANIFEST, manifest)


def _empty_stats(header: dict[str, Any]) -> dict[int, RunningStats]:
    return {int(layer): RunningStats(2, header["d_model"]) for layer in header["layers"]}


def _check_header(path: Path, old: dict[str, Any], header: dict[str, Any]) -> None:
    recorded = {"format": old.get("format"), **(old.get("header") or {})}
    check_same_settings(path, recorded, {"format": FORMAT, **header},
                        "a different activation cache")


def _check_finished(path: Path, entries: list[dict[str, Any]]) -> None:
    for entry in entries:
        for name, size in ((entry["file"], entry["bytes"]), (entry["meta_file"], None)):
            file = path / name
            if not file.is_file() or (size is not None and file.stat().st_size != size):
                raise DifflensError(
                    f"finished cache shard {file} is missing or truncated; delete "
                    f"{path} and re-run `difflens cache` to rebuild it")


def _remove_temporaries(path: Path) -> None:
    """Temporary files of atomic writes that a killed process left (``.NAME.XXXX.tmp``)."""
    for tmp in path.glob(".*.tmp"):
        tmp.unlink(missing_ok=True)


def _world_mismatch(path: Path, recorded: int, size: int) -> str:
    started = "a single process" if recorded == 1 else f"torchrun with {recorded} processes"
    now = "a single process" if size == 1 else f"{size} processes"
    same = ("run it without torchrun" if recorded == 1
            else f"rerun with `torchrun --nproc_per_node {recorded}`")
    return (f"the activation cache {path} was started by {started}, this run has {now}; to "
            f"finish it {same}, or delete {path} to start again")


# ---- shards from the models -----------------------------------------------------------------
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


def shard_rows(pair: ModelPair, seqs: list[Sequence], layers: list[int], batch_size: int,
               dtype: torch.dtype) -> ShardRows:
    """The rows of ``seqs`` (in their order, base then ft) at ``layers``, in ``dtype`` on the
    host, with their float64 statistics (taken on the device from the float32 rows).

    Batches are formed from length-sorted sequences (less padding) and right-padded; the kept
    rows of a batch are gathered on the device with one ``index_select`` per layer and side,
    and copied to the host once per batch.
    """
    from difflens.collect import layer_activations
    from difflens.data.padding import pad_id, pad_rows
    from difflens.models.pair import BASE, FT

    d = pair.arch(FT).hidden_size
    n_rows = sum(s.end - s.start for s in seqs)
    acts = {layer: torch.empty(n_rows, 2, d, dtype=dtype) for layer in layers}
    stats = {layer: RunningStats(2, d) for layer in layers}
    pad = pad_id(pair.tokenizer)
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i].tokens))
    for lo in range(0, len(order), batch_size):
        batch = [seqs[i] for i in order[lo: lo + batch_size]]
        ids, mask = pad_rows([s.tokens for s in batch], pad)
        width = ids.shape[1]
        # flat (row, position) of every kept token of the batch, and its row in the shard
        src = torch.cat([torch.arange(s.first_position, len(s.tokens)) + r * width
                         for r, s in enumerate(batch)])
        dst = torch.cat([torch.arange(s.start, s.end) for s in batch])
        full = bool(mask.all())  # no padding: let attention take its unmasked fast path
        sides = []
        for side in (BASE, FT):
            out = layer_activations(pair, side, ids, layers, None if full else mask)
            src_dev = src.to(out[layers[0]].device)
            sides.append(torch.stack([out[layer].reshape(-1, d).index_select(0, src_dev)
                                      for layer in layers]))  # (L, n, d)
            del out
        rows = torch.stack(sides, dim=2)  # (L, n, 2, d) float32 on the device
        for i, layer in enumerate(layers):
            stats[layer].merge(RunningStats.of(rows[i]))
        host = rows.to(dtype).cpu()  # the one device -> host copy of the batch
        for i, layer in enumerate(layers):
            acts[layer].index_copy_(0, dst, host[i])
    seq = torch.cat([torch.full((s.end - s.start,), s.seq, dtype=torch.int64) for s in seqs])
    pos = torch.cat([torch.arange(s.first_position, len(s.tokens)) for s in seqs])
    return ShardRows(acts, seq, pos, seqs, stats)


def _shard_sequences(kept: list[tuple[int, list[int], int]], lo: int, hi: int
                     ) -> list[Sequence]:
    seqs, start = [], 0
    for g in range(lo, hi):
        text, ids, first = kept[g]
        seqs.append(Sequence(g, text, start, start + len(ids) - first, first, ids))
        start += len(ids) - first
    return seqs


def write_behind(todo: Iterable[int], make: Callable[[int], ShardRows],
                 write: Callable[[int, ShardRows], Any], done: Callable[[int], None]) -> None:
    """For each index of ``todo``: ``make`` the shard (main thread), then ``write`` it in a
    background thread while the next one is made; ``done(index)`` runs in the main thread once
    that shard's write has returned (its files and record are final).  One write in flight; a
    write's error is raised here; on any error the write in flight is finished first, so no
    file is left half-written."""
    pending: tuple[int, Future] | None = None
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="difflens-cache-write") as pool:
        for index in todo:
            shard = make(index)
            if pending is not None:
                pending[1].result()
                finished, pending = pending[0], None
                done(finished)
            pending = (index, pool.submit(write, index, shard))
            del shard  # the writer holds it now: at most two shards in memory
        if pending is not None:
            pending[1].result()
            done(pending[0])


# ---- the build ------------------------------------------------------------------------------
def build_cache(pair: ModelPair, config: CacheConfig, out: str | Path, *, progress: bool = True,
                on_shard: Callable[[int], None] | None = None) -> ActivationCache:
    """Write (or finish) the activation cache of ``pair`` over ``config.corpus`` into ``out``.

    Finished shards of an interrupted run are kept and not recomputed.  ``on_shard(index)`` is
    called after each shard is final (for progress hooks and tests).  Under torchrun each rank
    builds its range of shards (module docstring); rank 0 returns the cache, the others raise
    :class:`~difflens.distributed.WorkerDone`.
    """
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
    rows = [sum(len(kept[g][1]) - kept[g][2] for g in range(lo, hi)) for lo, hi in plan]
    row_starts = [sum(rows[:i]) for i in range(len(rows))]
    build = _Build(pair, config, kept, plan, layers, rows, row_starts, progress, on_shard)
    if dd.world()[1] > 1:
        return _build_distributed(build, header, Path(out))
    writer = CacheWriter(out, header)
    build.run(writer, range(writer.next_shard, len(plan)))
    writer.finish()
    return ActivationCache(out)


class _Build(NamedTuple):
    pair: ModelPair
    config: CacheConfig
    kept: list[tuple[int, list[int], int]]
    plan: list[tuple[int, int]]
    layers: list[int]
    rows: list[int]  # rows per shard
    row_starts: list[int]
    progress: bool
    on_shard: Callable[[int], None] | None

    def run(self, writer: CacheWriter, todo: Iterable[int], fault: bool = False) -> None:
        """Make and write the shards ``todo`` (``fault``: the distributed test hook after the
        first one is final)."""
        from tqdm.auto import tqdm

        todo = list(todo)
        size = dd.world()[1]
        desc = "caching activations" + (f" (rank 0 of {size})" if size > 1 else "")
        bar = tqdm(total=sum(self.rows[i] for i in todo), unit="tok", desc=desc,
                   disable=not self.progress or not dd.is_main() or None)

        def make(index: int) -> ShardRows:
            return shard_rows(self.pair, _shard_sequences(self.kept, *self.plan[index]),
                              self.layers, self.config.batch_size, writer.dtype)

        def write(index: int, shard: ShardRows) -> None:
            writer.write(index, shard, self.row_starts[index])

        def done(index: int) -> None:
            bar.update(self.rows[index])
            if self.on_shard is not None:
                self.on_shard(index)
            if fault and index == todo[0]:
                dd.fault_point()

        try:
            write_behind(todo, make, write, done)
        finally:
            bar.close()


def _build_distributed(build: _Build, header: dict[str, Any], out: Path) -> ActivationCache:
    """Rank r builds its contiguous range of shards; rank 0 merges and writes the manifest."""
    rank, size = dd.world()
    header = json.loads(json.dumps(header))

    def check() -> str | None:  # rank 0 alone looks at (and prepares) the directory
        return _prepare_distributed(out, header, size) if rank == 0 else None

    state = dd.from_main(dd.run_shard("checking the cache directory", check))
    if state == "complete":
        if rank != 0:
            raise dd.WorkerDone()
        dd.end_collectives()
        return ActivationCache(out)
    writer = CacheWriter(out, header, rank=(rank, size))
    lo, hi = dd.shard_range(len(build.plan), rank, size)

    def local() -> Any:
        finished = {int(e["index"]) for e in writer.entries}
        build.run(writer, [i for i in range(lo, hi) if i not in finished], fault=True)
        return writer.records()

    records = dd.gather_objects(dd.run_shard("activation caching", local), to_main=True)
    if rank != 0:
        raise dd.WorkerDone()
    dd.end_collectives()
    entries, stats = [], {}
    for part_entries, part_stats in records or []:
        entries += part_entries
        stats.update(part_stats)
    entries.sort(key=lambda e: e["index"])
    if [e["index"] for e in entries] != list(range(len(build.plan))):
        raise DifflensError(f"the ranks finished {len(entries)} of {len(build.plan)} shards of "
                            f"{out}; {dd.RESUME}")
    merged = _empty_stats(header)
    for entry in entries:  # shard order: the single process's merges, in its order
        for layer, part in stats[entry["index"]].items():
            merged[int(layer)].merge(RunningStats.from_json(part))
    write_manifest(out, header, entries, merged, complete=True)
    for r in range(size):  # the manifest is final: the ranks' records are no longer needed
        (out / PROGRESS.format(rank=r)).unlink(missing_ok=True)
    return ActivationCache(out)


def _prepare_distributed(out: Path, header: dict[str, Any], size: int) -> str:
    """Rank 0, before any rank writes: ``"complete"``, or ``"build"`` once the directory holds
    an incomplete manifest recording ``size`` (one line if it was started with another world
    size or holds another cache)."""
    manifest_path = out / MANIFEST
    if manifest_path.exists():
        old = read_json(manifest_path)
        _check_header(out, old, header)
        if old.get("complete"):
            for stale in out.glob(PROGRESS.format(rank="*")):
                stale.unlink(missing_ok=True)
            return "complete"
        recorded = int(old.get("world_size", 1))
        if recorded != size:
            raise DifflensError(_world_mismatch(out, recorded, size))
    else:
        out.mkdir(parents=True, exist_ok=True)
        write_manifest(out, header, [], _empty_stats(header), complete=False, world_size=size)
    _remove_temporaries(out)
    return "build"
