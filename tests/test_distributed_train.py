"""Dictionary training under torchrun (DDP over gloo): 2 ranks equal 1 process; a killed rank
ends in one line and the rerun resumes; a checkpoint resumes at another number of ranks.
``--data-split shards``: the ranks' readers read every train row once per epoch between them,
a killed rank's rerun equals the uninterrupted 2-rank run, another number of ranks is one line.

The cache is built in-process from tiny random-init llamas; the process tests spawn
``python -m torch.distributed.run --standalone --nproc_per_node 2`` like tests/test_distributed.py
(one thread per process).  Without processes: the global BatchTopK cutoff from every rank's
candidates equals the single-batch selection.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from difflens import distributed as dd
from difflens.cli import main
from difflens.errors import DifflensError
from difflens.methods.dictionary import load_dictionary
from difflens.methods.dictionary.cache import assign_shards
from difflens.methods.dictionary.runner import TRAIN_LOG_FILE, CacheConfig, build_cache
from difflens.methods.dictionary.sparse_ops import batch_topk
from difflens.methods.dictionary.train import (
    RankGroup,
    Trainer,
    global_cutoff,
    local_candidates,
    select_at,
)
from difflens.models.pair import ModelPair
from torchrun import error_lines, torchrun

pytestmark = pytest.mark.usefixtures("one_thread")

WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "river", "town",
         "hills", "cake", "oven", "sugar"]


# -- without processes ----------------------------------------------------------------------------

def split_select(scores: torch.Tensor, k_total: int, ranks: int, hint: float | None = None):
    """What `ranks` ranks holding equal row blocks of `scores` select, rank by rank."""
    blocks = scores.chunk(ranks)
    local_k = k_total // ranks
    gathered = torch.cat([local_candidates(b, local_k * ranks, hint) for b in blocks])
    cutoff = global_cutoff(gathered, local_k * ranks)
    return [select_at(b, cutoff) for b in blocks], cutoff


@pytest.mark.parametrize("ranks", [2, 4])
def test_global_batch_topk_equals_the_whole_batch_selection(ranks):
    gen = torch.Generator().manual_seed(0)
    # Scores concentrated on a few rows: one rank's share holds most of the global top-k,
    # which a per-rank top-k (k·b each) would get wrong.
    scores = torch.relu(torch.randn(16, 40, generator=gen))
    scores[:4] *= 10
    for k_total, hint in ((16 * 3, None), (16 * 3, 2.0), (16 * 30, None), (16 * 40, None)):
        code, cutoff = batch_topk(scores, k_total)
        parts, got = split_select(scores, k_total, ranks, hint)
        assert got == cutoff
        mask = torch.cat([torch.zeros(p.batch_size, p.width, dtype=torch.bool)
                          .index_put_((p.rows, p.cols), torch.tensor(True)) for p in parts])
        want = torch.zeros_like(mask).index_put_((code.rows, code.cols), torch.tensor(True))
        assert torch.equal(mask, want), (k_total, hint)
        assert int(mask[:4].sum()) > k_total // ranks or k_total > scores.gt(0).sum()
    nothing, cutoff = split_select(torch.zeros(8, 5), 8, 2)
    assert cutoff == 0.0 and all(p.nnz == 0 for p in nothing)


def test_rank_group_counts_the_global_batch_and_any_rank_firing():
    other = torch.tensor([False, True, False, False])
    group = RankGroup(2, gather=lambda c: torch.cat([c, c]),
                      reduce=lambda t: t.long() + other.long())
    scores = torch.tensor([[0.0, 3.0, 1.0, 0.0], [0.0, 0.5, 2.0, 0.0]])
    # k_total 2 per rank, 4 globally; the other rank has the same scores: 3, 3, 2, 2 are kept.
    code, cutoff = group.select(scores, 2, None)
    assert cutoff == 2.0 and code.nnz == 2
    fired, batch, theta = group.stats(torch.tensor([False, False, True, False]), 2, None)
    assert fired.tolist() == [False, True, True, False] and batch == 4 and theta == 2.0
    assert group.stats(fired, 2, None)[2] is None  # l1: no selection this step, no θ update


# -- torchrun, 2 gloo ranks -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def cache(tiny_dir, tiny_ft_dir, tmp_path_factory):
    import random

    root = tmp_path_factory.mktemp("dist-train")
    rng = random.Random(3)
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 20)))
                                for _ in range(60)), encoding="utf-8")
    config = CacheConfig(corpus=str(corpus), max_tokens=16, layers=[2], tokens_per_shard=150,
                         batch_size=16)
    pair = ModelPair.load(str(tiny_dir), str(tiny_ft_dir))
    return build_cache(pair, config, root / "cache", progress=False)


def train_args(cache, out: Path, *extra: str) -> list[str]:
    # 12 steps of 64 rows cross an epoch boundary of the train split (~600 rows); k annealing
    # is off in the CLI; a checkpoint every 4 steps.
    return ["train", "crosscoder", "--cache", str(cache.path), "--width", "48", "--k", "4",
            "--steps", "12", "--batch-size", "64", "--lr", "0.005", "--warmup-steps", "2",
            "--buffer-rows", "128", "--checkpoint-every", "4", "--quiet", "--out", str(out),
            *extra]






@pytest.fixture(scope="module")
def single(cache, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("train-single") / "run"
    assert main(train_args(cache, out)) == 0
    return out


def train_log(out: Path) -> dict:
    return json.loads((out / TRAIN_LOG_FILE).read_text(encoding="utf-8"))


def assert_same_training(got: Path, want: Path) -> None:
    """The same dictionary up to float32 rounding (matrix products over half the rows, gradients
    summed in two halves), the same θ and dead-latent counters, the same logged values."""
    a = load_dictionary(got / "dictionary").state_dict()
    b = load_dictionary(want / "dictionary").state_dict()
    assert a.keys() == b.keys()
    for name in b:
        if b[name].is_floating_point():
            torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6, msg=name)
        else:
            assert torch.equal(a[name], b[name]), name
    la, lb = train_log(got)["log"], train_log(want)["log"]
    assert [r["step"] for r in la] == [r["step"] for r in lb]
    for ra, rb in zip(la, lb, strict=True):
        for key in ("total", "reconstruction", "auxk", "l0", "dead", "lr", "k"):
            assert ra[key] == pytest.approx(rb[key], rel=1e-4, abs=1e-6), key
        assert ra["fve"] == pytest.approx(rb["fve"], rel=1e-4, abs=1e-5)


def test_two_ranks_train_the_single_process_dictionary(cache, single, tmp_path):
    out = tmp_path / "dist"
    proc = torchrun(train_args(cache, out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("trained crosscoder for 12 steps") == 1  # rank 1 printed nothing
    assert_same_training(out, single)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in single.iterdir())
    assert train_log(out)["resumed_from"] is None


def test_killed_rank_is_one_line_and_the_rerun_resumes(cache, single, tmp_path):
    out = tmp_path / "run"
    raised = torchrun(train_args(cache, out), **{dd.FAIL_RANK_ENV: "1"})
    assert raised.returncode != 0
    lines = error_lines(raised)  # rank 1 logs its reason; rank 0 says it in one line
    assert len(lines) == 1 and "rerun the same command" in lines[0], raised.stderr[-3000:]
    assert "rank 1 failed at step 5: injected failure" in raised.stderr
    died = torchrun(train_args(cache, out), **{dd.FAIL_RANK_ENV: "1", dd.FAIL_MODE_ENV: "exit"})
    assert died.returncode != 0
    lines = error_lines(died)
    assert len(lines) == 1 and "rerun the same command" in lines[0], died.stderr[-3000:]
    # Rank 1 died one step after the step-4 checkpoint: that one is complete, nothing else is.
    assert not (out / "dictionary").exists() and not (out / TRAIN_LOG_FILE).exists()
    steps = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert steps[0] == "step_000000004" and not list(out.rglob("*.tmp"))
    again = torchrun(train_args(cache, out))
    assert again.returncode == 0, again.stderr[-3000:]
    assert train_log(out)["resumed_from"] == 4
    assert_same_training(out, single)


def test_checkpoint_resumes_on_another_number_of_ranks(cache, single, tmp_path, monkeypatch):
    out = tmp_path / "run"
    original = Trainer.save_checkpoint

    def crash_after_step_8(self):
        path = original(self)
        if self.step == 8:
            raise KeyboardInterrupt
        return path

    monkeypatch.setattr(Trainer, "save_checkpoint", crash_after_step_8)
    assert main(train_args(cache, out)) == 130  # interrupted alone after step 8
    monkeypatch.undo()
    proc = torchrun(train_args(cache, out))  # ... finished by 2 ranks
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert train_log(out)["resumed_from"] == 8
    assert_same_training(out, single)


def test_batch_not_divisible_by_the_ranks_is_one_line(cache, tmp_path):
    proc = torchrun(train_args(cache, tmp_path / "odd", "--batch-size", "63"))
    assert proc.returncode != 0
    lines = error_lines(proc)
    assert len(lines) == 1 and "not a multiple of the 2 ranks" in lines[0], proc.stderr[-3000:]


# -- --data-split shards -------------------------------------------------------------------------

def test_assign_shards_gives_each_shard_with_rows_to_one_rank_balanced():
    gen = torch.Generator().manual_seed(1)
    for size in (2, 3, 5):
        rows = torch.randint(0, 200, (23,), generator=gen).tolist()
        rows[4] = rows[9] = 0  # shards without train rows (all validation)
        order = torch.randperm(23, generator=gen).tolist()
        mine = assign_shards(order, rows, size)
        flat = [i for part in mine for i in part]
        assert sorted(flat) == [i for i in range(23) if rows[i]]  # once each, empty ones nowhere
        for part in mine:  # each rank keeps the seeded epoch order
            assert part == [i for i in order if i in part]
        loads = [sum(rows[i] for i in part) for part in mine]
        assert max(loads) - min(loads) <= max(rows), (size, loads)
    assert assign_shards([2, 0, 1], [5, 3, 9], 2) == [[2], [0, 1]]  # rank 0: 9, rank 1: 5 + 3


def rows_of(reader) -> list[tuple[int, int]]:
    return [(s, r) for chunk in reader for s, r in zip(chunk.shard.tolist(), chunk.row.tolist(),
                                                       strict=True)]


@pytest.mark.parametrize("size", [2, 3])
def test_shard_readers_read_every_train_row_once_per_epoch(cache, size):
    kw = {"seed": 7, "buffer_rows": 64, "chunk_rows": 10, "with_index": True}
    whole = rows_of(cache.reader(2, "train", **kw))
    assert len(whole) == len(set(whole)) == cache.reader(2, "train").rows_per_epoch
    for epoch in (0, 1):
        seen, shards = [], []
        for rank in range(size):
            reader = cache.reader(2, "train", data_split="shards", rank=rank, world_size=size,
                                  epochs=epoch + 1, **kw)
            got = rows_of(reader(sum(reader.epoch_rows(e) for e in range(epoch))))
            assert len(got) == reader.epoch_rows(epoch) > 0
            mine = set(reader.epoch_shards(epoch)[0])
            assert {s for s, _ in got} == mine  # only (and all of) its own shards
            seen += got
            shards.append(mine)
        assert sorted(seen) == sorted(whole)  # every train row exactly once over the ranks
        assert not set.intersection(*shards)
    # One process: "shards" is the stream reader, row for row.
    alone = cache.reader(2, "train", data_split="shards", rank=0, world_size=1, **kw)
    assert rows_of(alone) == whole


def test_shard_reader_resumes_at_any_row_of_its_own_stream(cache):
    reader = cache.reader(2, "train", seed=3, buffer_rows=64, chunk_rows=10, epochs=None,
                          data_split="shards", rank=1, world_size=2)
    first = reader.epoch_rows(0)
    want = []
    for chunk in reader:
        want.append(chunk)
        if sum(c.shape[0] for c in want) > first + reader.epoch_rows(1) + 50:
            break
    want = torch.cat(want)
    assert 0 < first < reader.rows_per_epoch  # its own share of the epoch
    for start in (0, 7, first - 3, first, first + reader.epoch_rows(1) + 5):
        got = []
        for chunk in reader(start):
            got.append(chunk)
            if sum(c.shape[0] for c in got) >= 40:
                break
        assert torch.equal(torch.cat(got)[:40], want[start : start + 40]), start


def test_more_ranks_than_shards_is_one_line(cache):
    with pytest.raises(DifflensError, match="fewer than the 64 ranks; use --data-split stream"):
        cache.reader(2, "train", data_split="shards", rank=0, world_size=64)


@pytest.fixture(scope="module")
def shards_run(cache, tmp_path_factory) -> Path:
    """An uninterrupted 2-rank ``--data-split shards`` run."""
    out = tmp_path_factory.mktemp("train-shards") / "run"
    proc = torchrun(train_args(cache, out, "--data-split", "shards"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_two_ranks_train_on_their_own_shards(cache, shards_run, single):
    log = train_log(shards_run)
    assert log["step"] == 12 and log["resumed_from"] is None
    assert log["log"][-1]["fve"][0] > log["log"][0]["fve"][0]  # it learned
    meta = json.loads(next((shards_run / "checkpoints").glob("*/trainer.json")).read_text())
    assert meta["data_split"] == "shards" and meta["world_size"] == 2
    recorded = json.loads((shards_run / "training.json").read_text())["read"]
    assert recorded["data_split"] == "shards"
    # Other global batches than the stream's: not the 1-process dictionary.
    a = load_dictionary(shards_run / "dictionary").state_dict()
    b = load_dictionary(single / "dictionary").state_dict()
    assert not torch.allclose(a["W_dec"], b["W_dec"], rtol=1e-3, atol=1e-4)


def test_shards_killed_rank_resumes_to_the_uninterrupted_run(cache, shards_run, tmp_path,
                                                              capsys):
    out = tmp_path / "run"
    args = train_args(cache, out, "--data-split", "shards")
    died = torchrun(args, **{dd.FAIL_RANK_ENV: "1", dd.FAIL_MODE_ENV: "exit"})
    assert died.returncode != 0
    lines = error_lines(died)
    assert len(lines) == 1 and "rerun the same command" in lines[0], died.stderr[-3000:]
    assert not (out / "dictionary").exists()
    # The step-4 checkpoint of 2 ranks' own shards does not continue on 1 process: one line.
    assert main(args) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(err) == 1 and "written by 2 rank(s) with --data-split shards" in err[0]
    assert "`torchrun --nproc_per_node 2`" in err[0]
    assert not (out / "dictionary").exists()
    # ... nor with the other data split (training.json says so first).
    assert main(train_args(cache, out)) == 2
    assert "differs in: read" in capsys.readouterr().err
    again = torchrun(args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert train_log(out)["resumed_from"] == 4
    assert_same_training(out, shards_run)
