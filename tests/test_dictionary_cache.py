"""Activation cache: contents equal direct forwards, seeded shuffling, splits, resume, bad input."""

from __future__ import annotations

import json
import random

import pytest
import torch

from difflens.cli import main
from difflens.collect import layer_activations
from difflens.data.tokenize import encode
from difflens.errors import DifflensError
from difflens.methods.dictionary.cache import MANIFEST, ActivationCache, check_cache_matches
from difflens.methods.dictionary.runner import CacheConfig, build_cache
from difflens.models.pair import ModelPair

LAYERS = [1, 3]


pytestmark = pytest.mark.usefixtures("one_thread")


def write_corpus(path, n: int = 40, seed: int = 0):
    """Texts of 1-24 words: some shorter than max_tokens (padding), most longer (truncation)."""
    rng = random.Random(seed)
    words = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "river", "town",
             "hills", "cake", "oven", "sugar"]
    lines = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 24))) for _ in range(n)]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus") / "corpus.txt")


@pytest.fixture(scope="module")
def pair(tiny_dir, tiny_ft_dir):
    return ModelPair.load(str(tiny_dir), str(tiny_ft_dir))


def config(corpus, **overrides) -> CacheConfig:
    base = dict(corpus=str(corpus), max_tokens=12, layers=LAYERS, tokens_per_shard=80,
                batch_size=8)
    return CacheConfig(**{**base, **overrides})


@pytest.fixture(scope="module")
def cache(pair, corpus, tmp_path_factory):
    return build_cache(pair, config(corpus), tmp_path_factory.mktemp("cache") / "c",
                       progress=False)


def cli(capsys, *argv) -> tuple[int, str]:
    """Run ``difflens ARGV``; returns the exit code and the last stderr line."""
    import difflens.commands as commands
    from difflens.methods.dictionary.cli import add_parsers

    original = commands.register_all

    def register_all(sub):  # until commands.py registers the dictionary commands itself
        original(sub)
        if "cache" not in sub.choices:
            add_parsers(sub)

    commands.register_all = register_all
    try:
        code = main([str(a) for a in argv])
    finally:
        commands.register_all = original
    err = capsys.readouterr().err.strip().splitlines()
    return code, err[-1] if err else ""


def test_cache_equals_direct_forwards(pair, corpus, cache):
    manifest = json.loads((cache.path / MANIFEST).read_text())
    assert manifest["complete"] and len(cache.shards) == manifest["header"]["n_shards"] > 2
    assert cache.layers == LAYERS and cache.d_model == 32 and cache.dtype == torch.float32
    texts = corpus.read_text().splitlines()
    seen_rows, seen_texts = 0, []
    all_rows = {layer: [] for layer in LAYERS}
    for index, entry in enumerate(cache.shards):
        data = cache.read_shard(index)
        assert data.seq.numel() == entry["rows"]
        for s in cache.sequences(index):
            seen_texts.append(s.text)
            assert s.tokens == encode(pair.tokenizer, texts[s.text])[:12]
            assert s.first_position == 1  # BOS left out by default
            assert data.pos[s.start: s.end].tolist() == list(range(1, len(s.tokens)))
            assert (data.seq[s.start: s.end] == s.seq).all()
            ids = torch.tensor([s.tokens])
            for m, side in enumerate(("base", "ft")):
                direct = layer_activations(pair, side, ids, LAYERS)
                for layer in LAYERS:
                    torch.testing.assert_close(data.acts[layer][s.start: s.end, m],
                                               direct[layer][0, 1:], atol=1e-5, rtol=1e-5)
        seen_rows += entry["rows"]
        for layer in LAYERS:
            all_rows[layer].append(data.acts[layer])
    assert seen_texts == list(range(len(texts)))  # every text, in order, once
    assert seen_rows == cache.n_rows == manifest["header"]["n_rows"]
    for layer in LAYERS:  # running statistics = statistics of everything that was written
        x = torch.cat(all_rows[layer]).double()
        stats = cache.stats(layer)
        torch.testing.assert_close(stats.mean, x.mean(0))
        torch.testing.assert_close(stats.variance, x.var(0, unbiased=False))
        torch.testing.assert_close(stats.mean_norm, x.norm(dim=-1).mean(0))


def test_bfloat16_storage(pair, corpus, cache, tmp_path):
    small = build_cache(pair, config(corpus, dtype="bfloat16"), tmp_path / "bf16",
                        progress=False)
    assert small.dtype == torch.bfloat16
    assert sum(e["bytes"] for e in small.shards) < 0.6 * sum(e["bytes"] for e in cache.shards)
    for index in range(len(cache.shards)):
        full, half = cache.read_shard(index), small.read_shard(index)
        for layer in LAYERS:
            assert half.acts[layer].dtype == torch.bfloat16
            assert torch.equal(half.acts[layer], full.acts[layer].to(torch.bfloat16))
    chunk = next(iter(small.reader(1, "all", shuffle=False)))
    assert chunk.dtype == torch.float32  # readers hand out float32


def rows_of(reader) -> list[tuple[int, int]]:
    out = []
    for chunk in reader:
        assert chunk.x.shape[1:] == (2, 32)
        out += list(zip(chunk.shard.tolist(), chunk.row.tolist(), strict=True))
    return out


def test_shuffle_reader_is_seeded_and_covers_each_row_once(cache):
    kw = dict(buffer_rows=50, chunk_rows=7, with_index=True)
    first = rows_of(cache.reader(1, "all", seed=3, **kw))
    assert first == rows_of(cache.reader(1, "all", seed=3, **kw))  # replayable
    everything = [(i, r) for i, e in enumerate(cache.shards) for r in range(e["rows"])]
    assert sorted(first) == everything  # every row exactly once per epoch
    assert first != everything  # ... in shuffled order
    assert first != rows_of(cache.reader(1, "all", seed=4, **kw))
    in_order = rows_of(cache.reader(1, "all", shuffle=False, **kw))
    assert in_order == everything
    two = rows_of(cache.reader(1, "all", seed=3, epochs=2, **kw))
    assert two[: len(first)] == first and sorted(two[len(first):]) == everything
    assert two[len(first):] != first  # a new order each epoch
    # The values follow their indices through the buffer.
    chunk = next(iter(cache.reader(3, "all", seed=3, **kw)))
    shard0 = {i: cache.read_shard(i) for i in set(chunk.shard.tolist())}
    expected = torch.stack([shard0[s].acts[3][r] for s, r in
                            zip(chunk.shard.tolist(), chunk.row.tolist(), strict=True)])
    assert torch.equal(chunk.x, expected)


def test_reader_resumes_at_any_row(cache):
    reader = cache.reader(1, "train", seed=5, buffer_rows=40, chunk_rows=9, epochs=None)
    stream = []
    for chunk in reader:
        stream.append(chunk)
        if sum(c.shape[0] for c in stream) > 3 * reader.rows_per_epoch:
            break
    stream = torch.cat(stream)
    for start in (0, 5, reader.rows_per_epoch + 17, 2 * reader.rows_per_epoch):
        head = []
        for chunk in reader(start):
            head.append(chunk)
            if sum(c.shape[0] for c in head) >= 100:
                break
        torch.testing.assert_close(torch.cat(head)[:100], stream[start: start + 100])


def test_split_is_by_sequence_and_disjoint(cache):
    def sequences(split, **kw):
        reader = cache.reader(1, split, shuffle=False, with_index=True, **kw)
        seqs = set()
        for chunk in reader:
            for shard, row in zip(chunk.shard.tolist(), chunk.row.tolist(), strict=True):
                seqs.add(int(cache.read_shard(shard).seq[row]))
        return seqs, reader.rows_per_epoch

    train, n_train = sequences("train", val_fraction=0.2, split_seed=1)
    val, n_val = sequences("val", val_fraction=0.2, split_seed=1)
    assert not train & val and train | val == set(range(cache.n_sequences))
    assert len(val) == round(0.2 * cache.n_sequences)
    assert n_train + n_val == cache.n_rows
    assert sequences("val", val_fraction=0.2, split_seed=1)[0] == val  # deterministic
    assert sequences("val", val_fraction=0.2, split_seed=2)[0] != val


class Interrupted(Exception):
    pass


def test_interrupted_cache_resumes_without_redoing_shards(pair, corpus, cache, tmp_path):
    out = tmp_path / "resumed"

    def stop_after_first(index):
        if index == 0:
            raise Interrupted

    with pytest.raises(Interrupted):
        build_cache(pair, config(corpus), out, progress=False, on_shard=stop_after_first)
    manifest = json.loads((out / MANIFEST).read_text())
    assert not manifest["complete"] and len(manifest["shards"]) == 1
    with pytest.raises(DifflensError, match="incomplete"):
        ActivationCache(out)
    first = out / manifest["shards"][0]["file"]
    stamp = first.stat().st_mtime_ns
    done = []
    resumed = build_cache(pair, config(corpus), out, progress=False, on_shard=done.append)
    assert first.stat().st_mtime_ns == stamp  # finished shard not rewritten
    assert done == list(range(1, len(cache.shards)))  # only the remaining shards ran
    # Identical to the uninterrupted cache: same bytes, same statistics.
    assert [e["sha256"] for e in resumed.shards] == [e["sha256"] for e in cache.shards]
    assert [e["meta_sha256"] for e in resumed.shards] == [e["meta_sha256"] for e in cache.shards]
    for layer in LAYERS:
        assert torch.equal(resumed.stats(layer).m2, cache.stats(layer).m2)
        assert torch.equal(resumed.stats(layer).mean, cache.stats(layer).mean)


def test_rerun_of_finished_cache_is_a_no_op(pair, corpus, cache):
    stamps = [(cache.path / e["file"]).stat().st_mtime_ns for e in cache.shards]
    build_cache(pair, config(corpus), cache.path, progress=False)
    assert stamps == [(cache.path / e["file"]).stat().st_mtime_ns for e in cache.shards]


def test_other_settings_into_same_directory_refused(pair, corpus, cache):
    with pytest.raises(DifflensError, match="differs in: max_tokens") as err:
        build_cache(pair, config(corpus, max_tokens=10), cache.path, progress=False)
    assert "\n" not in str(err.value)


def test_cache_of_other_pair_or_layer_refused(cache, tiny_dir, tiny_ft_dir, tmp_path):
    check_cache_matches(cache, str(tiny_dir), str(tiny_ft_dir), 3)  # the right ones pass
    with pytest.raises(DifflensError, match="finetuned model"):
        check_cache_matches(cache, finetuned=str(tiny_dir))
    with pytest.raises(DifflensError, match="base model"):
        check_cache_matches(cache, base="embedded")
    with pytest.raises(DifflensError, match="not layer 2"):
        check_cache_matches(cache, layer=2)
    with pytest.raises(DifflensError, match="choose one with --layer"):
        cache.resolve_layer(None)


def corrupt_copy(cache, tmp_path):
    import shutil

    copy = tmp_path / "corrupt"
    shutil.copytree(cache.path, copy)
    victim = copy / cache.shards[1]["file"]
    blob = bytearray(victim.read_bytes())
    blob[-5] ^= 0xFF  # one flipped bit pattern inside the activations
    victim.write_bytes(bytes(blob))
    return copy, victim


def test_corrupt_shard_named_in_one_line(cache, tmp_path):
    copy, victim = corrupt_copy(cache, tmp_path)
    damaged = ActivationCache(copy)
    damaged.read_shard(0)  # intact shards still read
    with pytest.raises(DifflensError) as err:
        list(damaged.reader(1, "all", shuffle=False))
    message = str(err.value)
    assert str(victim) in message and "corrupt" in message and "\n" not in message


def test_cli_bad_cache_input_exits_2(capsys, cache, tiny_dir, tmp_path):
    out = tmp_path / "train"
    common = ["train", "crosscoder", "--cache", cache.path, "--width", 16, "--k", 2,
              "--steps", 2, "--batch-size", 16, "--out", out, "--quiet"]
    code, line = cli(capsys, *common, "--layer", 2)
    assert code == 2 and line.startswith("difflens: error: ") and "not layer 2" in line
    code, line = cli(capsys, *common, "--layer", 1, "--finetuned", tiny_dir)
    assert code == 2 and "was built from finetuned model" in line
    code, line = cli(capsys, *common)
    assert code == 2 and "choose one with --layer" in line
    copy, victim = corrupt_copy(cache, tmp_path)
    code, line = cli(capsys, "train", "crosscoder", "--cache", copy, "--layer", 1,
                     "--width", 16, "--k", 2, "--steps", 200, "--batch-size", 16,
                     "--out", tmp_path / "t2", "--quiet")
    assert code == 2 and "corrupt" in line and victim.name in line
    code, line = cli(capsys, "train", "diff-sae", "--cache", tmp_path / "nowhere",
                     "--out", out, "--quiet")
    assert code == 2 and "not an activation cache" in line


def test_cli_cache_command(capsys, tiny_dir, tiny_ft_dir, corpus, tmp_path):
    out = tmp_path / "cli-cache"
    code = cli(capsys, "cache", "--base", tiny_dir, "--finetuned", tiny_ft_dir, "--corpus",
               corpus, "--n-texts", 10, "--max-tokens", 8, "--layer", 2, "--dtype", "bfloat16",
               "--tokens-per-shard", 30, "--out", out, "--quiet")[0]
    assert code == 0
    made = ActivationCache(out)
    assert made.dtype == torch.bfloat16 and made.layers == [2]
    assert made.header["n_texts_read"] == 10
    assert made.read_shard(0).acts[2].dtype == torch.bfloat16
    code, line = cli(capsys, "cache", "--base", tiny_dir, "--finetuned", tiny_ft_dir,
                     "--corpus", corpus, "--max-tokens", 0, "--out", out, "--quiet")
    assert code == 2 and "--max-tokens" in line


def straightforward_shard(pair, cache, index: int, dtype: torch.dtype) -> bytes:
    """Shard ``index`` the straightforward way: the same batches, a per-sequence copy loop on the
    host, statistics-free, serialised once (what the cache wrote before rows were gathered on
    the device and written behind)."""
    from safetensors.torch import save

    from difflens.data.padding import pad_id, pad_rows
    from difflens.methods.dictionary.cache import FORMAT

    seqs = cache.sequences(index)
    n = sum(s.end - s.start for s in seqs)
    acts = {layer: torch.empty(n, 2, cache.d_model) for layer in cache.layers}
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i].tokens))
    batch_size = 8  # config()'s
    for lo in range(0, len(order), batch_size):
        batch = [seqs[i] for i in order[lo: lo + batch_size]]
        ids, mask = pad_rows([s.tokens for s in batch], pad_id(pair.tokenizer))
        for m, side in enumerate(("base", "ft")):
            out = layer_activations(pair, side, ids, cache.layers,
                                    None if bool(mask.all()) else mask)
            for layer in cache.layers:
                for row, s in enumerate(batch):
                    acts[layer][s.start: s.end, m] = out[layer][row, s.first_position:
                                                                len(s.tokens)]
    tensors = {f"acts.{layer}": a.to(dtype).contiguous() for layer, a in acts.items()}
    tensors["seq"] = torch.cat([torch.full((s.end - s.start,), s.seq) for s in seqs])
    tensors["pos"] = torch.cat([torch.arange(s.first_position, len(s.tokens)) for s in seqs])
    return save(tensors, metadata={"format": f"{FORMAT} shard {index}"})


def test_shards_are_byte_identical_to_the_straightforward_path(pair, corpus, cache, tmp_path):
    from difflens.methods.dictionary.cache import sha256_hex

    small = build_cache(pair, config(corpus, dtype="bfloat16"), tmp_path / "bf16",
                        progress=False)
    for made, dtype in ((cache, torch.float32), (small, torch.bfloat16)):
        for index, entry in enumerate(made.shards):
            blob = straightforward_shard(pair, made, index, dtype)
            assert entry["bytes"] == len(blob)
            assert entry["sha256"] == sha256_hex(blob), (dtype, index)


def test_running_stats_merge_equals_one_pass():
    from difflens.methods.dictionary.cache import RunningStats

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(301, 2, 16, generator=gen) * 3 + 7
    whole = RunningStats.of(x)
    merged = RunningStats(2, 16)
    for part in x.split(97):
        merged.merge(RunningStats.of(part))
    assert merged.count == whole.count == 301
    for name in ("mean", "m2", "norm_sum"):
        torch.testing.assert_close(getattr(merged, name), getattr(whole, name), rtol=1e-12,
                                   atol=1e-12)
    assert merged.diff_mean_norm == pytest.approx(whole.diff_mean_norm, rel=1e-12)
    x64 = x.double()  # and both are the float64 statistics of the rows
    torch.testing.assert_close(whole.variance, x64.var(0, unbiased=False), rtol=1e-12, atol=0)
    torch.testing.assert_close(whole.mean_norm, x64.norm(dim=-1).mean(0), rtol=1e-12, atol=0)
    empty = RunningStats(2, 16).merge(whole)  # merging into nothing is exact
    assert torch.equal(empty.mean, whole.mean) and torch.equal(empty.m2, whole.m2)


def test_a_failed_background_write_surfaces_and_the_rerun_resumes(pair, corpus, cache, tmp_path,
                                                                   monkeypatch):
    import difflens.methods.dictionary.building as building

    real = building.atomic_write_bytes
    calls = []

    def failing(path, data):  # the third shard's tensor file fails (e.g. the disk is full)
        calls.append(path.name)
        if path.name == "shard_00002.safetensors":
            raise OSError(28, "No space left on device")
        real(path, data)

    monkeypatch.setattr(building, "atomic_write_bytes", failing)
    out = tmp_path / "failed"
    with pytest.raises(OSError, match="No space left"):
        build_cache(pair, config(corpus), out, progress=False)
    manifest = json.loads((out / MANIFEST).read_text())
    assert [e["index"] for e in manifest["shards"]] == [0, 1]  # recorded after their files
    assert not (out / "shard_00002.safetensors").exists() and not list(out.glob(".*.tmp"))
    monkeypatch.setattr(building, "atomic_write_bytes", real)
    done = []
    resumed = build_cache(pair, config(corpus), out, progress=False, on_shard=done.append)
    assert done == list(range(2, len(cache.shards)))
    assert [e["sha256"] for e in resumed.shards] == [e["sha256"] for e in cache.shards]
