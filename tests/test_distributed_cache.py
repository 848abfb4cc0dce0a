"""The activation cache under torchrun (2 gloo ranks, tiny random-init models): the same shards
(sha256) and statistics as one process; a killed rank → one line on rank 0 → the rerun resumes
the finished shards and ends equal; a rerun with another world size → one line.

Processes are launched as in ``tests/test_distributed.py``: ``python -m torch.distributed.run
--standalone --nproc_per_node 2``, one thread per process.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from difflens import distributed as dd
from difflens.cli import main
from difflens.methods.dictionary.building import PROGRESS
from difflens.methods.dictionary.cache import MANIFEST, ActivationCache
from torchrun import error_lines, torchrun

pytestmark = pytest.mark.usefixtures("one_thread")

WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "river", "town",
         "hills", "cake", "oven", "sugar"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    import random

    rng = random.Random(0)
    lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 20))) for _ in range(48)]
    path = tmp_path_factory.mktemp("cache-corpus") / "corpus.txt"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def cache_args(tiny_dir, tiny_ft_dir, corpus, out) -> list[str]:
    # ~9 shards of whole sequences: 5 for rank 0, 4 for rank 1.
    return ["cache", "--base", str(tiny_dir), "--finetuned", str(tiny_ft_dir), "--corpus",
            str(corpus), "--max-tokens", "12", "--layer", "1", "3", "--tokens-per-shard", "40",
            "--batch-size", "4", "--quiet", "--out", str(out)]






@pytest.fixture(scope="module")
def single(tmp_path_factory, tiny_dir, tiny_ft_dir, corpus) -> Path:
    out = tmp_path_factory.mktemp("cache-single") / "cache"
    assert main(cache_args(tiny_dir, tiny_ft_dir, corpus, out)) == 0
    return out


def manifest(path: Path) -> dict:
    return json.loads((path / MANIFEST).read_text(encoding="utf-8"))


def assert_same_cache(dist: Path, single: Path) -> None:
    got, want = manifest(dist), manifest(single)
    assert got["complete"] and want["complete"] and len(want["shards"]) >= 8
    assert got["header"] == want["header"]
    assert got["shards"] == want["shards"]  # sizes, sha256 of tensors and metadata, row_start
    assert set(got) == set(want)  # the plain format: no world_size left behind
    # Per-shard statistics merged in shard order by rank 0 are the single process's merges in
    # its order: with bit-equal activations (the sha256 above) the floats are the same.
    assert got["stats"] == want["stats"]
    assert got["stats"]["1"]["count"] == want["header"]["n_rows"]
    assert sorted(p.name for p in dist.iterdir()) == sorted(p.name for p in single.iterdir())
    cache = ActivationCache(dist)  # readable, every shard verified
    for index in range(len(cache.shards)):
        cache.read_shard(index)


def test_cache_on_two_ranks_equals_one_process(tmp_path, tiny_dir, tiny_ft_dir, corpus, single):
    out = tmp_path / "dist"
    proc = torchrun(cache_args(tiny_dir, tiny_ft_dir, corpus, out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("cache: ") == 1  # rank 0 alone reports
    assert_same_cache(out, single)
    again = torchrun(cache_args(tiny_dir, tiny_ft_dir, corpus, out))  # finished: a no-op
    assert again.returncode == 0, again.stderr[-3000:]
    assert_same_cache(out, single)


def test_killed_rank_is_one_line_and_the_rerun_resumes(tmp_path, tiny_dir, tiny_ft_dir, corpus,
                                                       single):
    out = tmp_path / "run"
    args = cache_args(tiny_dir, tiny_ft_dir, corpus, out)
    died = torchrun(args, **{dd.FAIL_RANK_ENV: "1", dd.FAIL_MODE_ENV: "exit"})
    assert died.returncode != 0
    lines = error_lines(died)
    assert len(lines) == 1 and "rerun the same command" in lines[0], died.stderr[-3000:]
    assert not manifest(out)["complete"] and manifest(out)["world_size"] == 2
    assert not list(out.glob(".*.tmp"))  # nothing half-written
    rank1 = json.loads((out / PROGRESS.format(rank=1)).read_text(encoding="utf-8"))
    assert len(rank1["shards"]) == 1  # it died right after its first shard was final
    finished = [e for r in (0, 1) if (out / PROGRESS.format(rank=r)).exists()
                for e in json.loads((out / PROGRESS.format(rank=r)).read_text())["shards"]]
    stamps = {e["file"]: (out / e["file"]).stat().st_mtime_ns for e in finished}

    # Another world size: one line saying what to do, nothing touched.
    code = main(args)
    assert code == 2
    assert not manifest(out)["complete"]

    again = torchrun(args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert_same_cache(out, single)
    assert stamps == {f: (out / f).stat().st_mtime_ns for f in stamps}  # not rewritten


def test_another_world_size_is_refused_in_one_line(tmp_path, tiny_dir, tiny_ft_dir, corpus,
                                                    capsys):
    from difflens.methods.dictionary.runner import CacheConfig, build_cache
    from difflens.models.pair import ModelPair

    class Stop(Exception):
        pass

    def stop(index):
        raise Stop

    out = tmp_path / "plain"
    config = CacheConfig(corpus=str(corpus), max_tokens=12, layers=[1, 3], tokens_per_shard=40,
                         batch_size=4)
    pair = ModelPair.load(str(tiny_dir), str(tiny_ft_dir))
    with pytest.raises(Stop):  # a single-process build interrupted after its first shard ...
        build_cache(pair, config, out, progress=False, on_shard=stop)
    assert len(manifest(out)["shards"]) == 1
    proc = torchrun(cache_args(tiny_dir, tiny_ft_dir, corpus, out))  # ... is not taken over
    assert proc.returncode != 0
    lines = error_lines(proc)
    assert len(lines) == 1 and "started by a single process" in lines[0], proc.stderr[-3000:]
    assert "run it without torchrun" in lines[0] and f"delete {out}" in lines[0]
    assert len(manifest(out)["shards"]) == 1 and "world_size" not in manifest(out)
