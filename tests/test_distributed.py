"""Data-parallel runs (difflens.distributed): torchrun with 2 gloo ranks on tiny random-init
models equals the single-process run; a failed rank ends in one line and the rerun resumes.

The process tests spawn ``python -m torch.distributed.run --standalone --nproc_per_node 2`` (a
free rendezvous port, so concurrent test runs do not collide), one thread per process.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from difflens import distributed as dd
from difflens.cli import main
from difflens.errors import DifflensError
from difflens.methods.adl.result import ADLResult
from difflens.methods.mining.aggregate import MiningCounts
from difflens.methods.mining.result import CorpusCounts, MiningResult
from difflens.stats import DiffMoments
from torchrun import error_lines, torchrun

TOPICS = ["harbour", "mountain", "library", "engine", "garden", "river", "concert", "letter"]
SKIP = ["patchscope", "steering", "relevance", "similarity", "causal", "report"]


# -- without processes ----------------------------------------------------------------------------

def test_shards_are_contiguous_balanced_and_cover_the_rows():
    for size in range(1, 5):
        for n in range(0, 11):
            parts = [dd.shard_range(n, rank, size) for rank in range(size)]
            rows = [i for start, stop in parts for i in range(start, stop)]
            assert rows == list(range(n)), (n, size)
            lengths = [stop - start for start, stop in parts]
            assert max(lengths) - min(lengths) <= 1 and lengths == sorted(lengths, reverse=True)


def test_alone_every_helper_is_the_identity(monkeypatch):
    monkeypatch.setenv(dd.FAIL_RANK_ENV, "0")  # the test hook never fires outside torchrun
    assert dd.world() == (0, 1) and dd.is_main()
    items = list(range(7))
    assert dd.shard(items) == items
    x = torch.arange(4, dtype=torch.float32)
    total = dd.all_reduce_sum(x)
    assert total.dtype == torch.float64 and torch.equal(total, x.double())
    assert dd.all_reduce_sum(torch.arange(3)).dtype == torch.int64
    assert dd.gather_objects("a") == ["a"] and dd.from_main(5) == 5
    acc = object()
    assert dd.merged(acc) is acc
    assert dd.run_shard("work", lambda: 3) == 3
    dd.fault_point()
    dd.barrier()


def test_a_command_that_does_not_shard_is_refused_under_torchrun(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(DifflensError, match="does not run data-parallel"):
        dd.refuse_unsupported("pca", ("adl", "mine"))
    dd.refuse_unsupported("adl", ("adl", "mine"))


def test_moments_of_shards_merged_in_rank_order_equal_the_whole():
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(13, 3, 8, generator=gen) * 5 + 2
    ft = base + torch.randn(13, 3, 8, generator=gen)
    whole = DiffMoments([0], 3, 8)
    for start in range(0, 13, 4):
        whole.update(0, base[start:start + 4], ft[start:start + 4])
    parts = []
    for rank in range(3):
        start, stop = dd.shard_range(13, rank, 3)
        part = DiffMoments([0], 3, 8)
        part.update(0, base[start:stop], ft[start:stop])
        parts.append(part)
    merged = parts[0].merge(parts[1]).merge(parts[2])
    assert merged.count == 13
    for name in ("mean", "m2"):
        assert torch.allclose(getattr(merged.diff[0], name), getattr(whole.diff[0], name),
                              rtol=1e-12, atol=1e-12)
    assert torch.allclose(merged.means["ft"][0], whole.means["ft"][0], rtol=1e-12)
    assert torch.allclose(merged.norms["diff"][0].mean, whole.norms["diff"][0].mean, rtol=1e-12)


def test_mining_counts_merged_across_ranks_equal_one_pass_sample_included():
    import pickle

    gen = torch.Generator().manual_seed(1)
    delta = torch.randn(40, 50, generator=gen)
    valid = torch.rand(40, generator=gen) > 0.2
    whole = MiningCounts(50, 5, sample_size=10)
    for start in (0, 20):  # the ranks' batches (Δ column sums are float32 within a batch)
        whole.update(delta[start:start + 20], valid[start:start + 20],
                     torch.arange(start, start + 20))
    parts = []
    for rank in range(2):
        start, stop = dd.shard_range(40, rank, 2)
        part = MiningCounts(50, 5, sample_size=10)
        part.update(delta[start:stop], valid[start:stop], torch.arange(start, stop))
        parts.append(pickle.loads(pickle.dumps(part.finalize())))  # as gather_objects sends it
    merged = parts[0].merge(parts[1]).finalize()
    whole.finalize()
    assert merged.n_positions == whole.n_positions == int(valid.sum())
    for name in ("count_pos", "count_neg", "n_positive", "n_negative", "sample_ids",
                 "sample_idx", "sample_val"):
        assert torch.equal(getattr(merged, name), getattr(whole, name)), name
    assert torch.allclose(merged.sum_delta, whole.sum_delta, rtol=1e-12, atol=1e-12)
    assert merged.sample_ids.shape[0] == 10  # the bounded sample was actually cut
    assert merged.max_abs_delta == whole.max_abs_delta


# -- torchrun, 2 gloo ranks -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("dist-corpus") / "ref.txt"
    path.write_text("\n".join(
        f"A note {i} about the {TOPICS[i % 8]} near the old town square, where the river runs "
        "and the engine turns the gears of the mill all day long." for i in range(40)),
        encoding="utf-8")
    return path


def adl_args(tiny_dir, tiny_ft_dir, corpus, out) -> list[str]:
    # Batches of 4 rows: the 2 ranks' batches are exactly the single process's, so the float32
    # activations agree bit for bit and only the float64 merge order differs.
    return ["adl", "--base", str(tiny_dir), "--finetuned", str(tiny_ft_dir), "--corpus",
            str(corpus), "--n-texts", "16", "--k", "4", "--batch-size", "4", "--skip", *SKIP,
            "--quiet", "--out", str(out)]


def mine_args(tiny_dir, tiny_ft_dir, corpus, out) -> list[str]:
    return ["mine", "--base", str(tiny_dir), "--finetuned", str(tiny_ft_dir), "--corpus",
            str(corpus), "--n-texts", "24", "--max-tokens", "16", "--top-k", "5",
            "--batch-size", "4", "--no-relevance", "--quiet", "--out", str(out)]




@pytest.fixture(scope="module")
def single_adl(tmp_path_factory, tiny_dir, tiny_ft_dir, corpus, one_thread) -> Path:
    out = tmp_path_factory.mktemp("adl-single") / "run"
    assert main(adl_args(tiny_dir, tiny_ft_dir, corpus, out)) == 0
    return out


def assert_same_adl(dist: Path, single: Path) -> None:
    got, want = ADLResult.load(dist), ADLResult.load(single)
    a, b = got.difference(), want.difference()
    assert a.stats.count == b.stats.count == 16
    for layer in b.stats.layers:
        for name in ("mean", "m2"):
            assert torch.allclose(getattr(a.stats.diff[layer], name),
                                  getattr(b.stats.diff[layer], name), rtol=1e-12, atol=1e-14)
        for side in ("base", "ft"):
            assert torch.allclose(a.stats.means[side][layer], b.stats.means[side][layer],
                                  rtol=1e-12, atol=1e-14)
    for side, per in b.norms.items():
        for layer, value in per.items():
            assert a.norms[side][layer] == pytest.approx(value, rel=1e-12)
    assert got.layer == want.layer
    assert got.relative_norms == pytest.approx(want.relative_norms, rel=1e-12)
    for layer, lens in want.lens.items():  # identical tokens, in the same order
        mine = got.lens[layer]
        for ours, theirs in ((mine.mean, lens.mean), (mine.negative, lens.negative),
                             (mine.base_mean, lens.base_mean)):
            assert ours.tokens == theirs.tokens
        assert [p.tokens for p in mine.positions] == [p.tokens for p in lens.positions]


def test_adl_on_two_ranks_equals_one_process_and_rank_0_alone_writes(
        tmp_path, tiny_dir, tiny_ft_dir, corpus, single_adl):
    out = tmp_path / "dist"
    proc = torchrun(adl_args(tiny_dir, tiny_ft_dir, corpus, out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("ADL  base=") == 1  # one summary: rank 1 printed nothing
    assert_same_adl(out, single_adl)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in single_adl.iterdir())


def test_mining_on_two_ranks_equals_one_process(tmp_path, tiny_dir, tiny_ft_dir, corpus,
                                                one_thread):
    single, dist = tmp_path / "single", tmp_path / "dist"
    assert main(mine_args(tiny_dir, tiny_ft_dir, corpus, single)) == 0
    proc = torchrun(mine_args(tiny_dir, tiny_ft_dir, corpus, dist))
    assert proc.returncode == 0, proc.stderr[-3000:]
    got, want = MiningResult.load(dist), MiningResult.load(single)
    assert got.n_positions == want.n_positions and got.n_texts == want.n_texts == 24
    assert got.promoted == want.promoted and got.suppressed == want.suppressed
    assert got.orderings() == want.orderings()
    assert got.topics == want.topics and got.examples == want.examples
    a, b = CorpusCounts.load(dist).counts, CorpusCounts.load(single).counts
    for name in ("count_pos", "count_neg", "n_positive", "n_negative", "sample_ids",
                 "sample_idx", "sample_val"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert torch.allclose(a.sum_delta, b.sum_delta, rtol=1e-12, atol=1e-12)


def test_failed_rank_ends_in_one_line_and_the_rerun_resumes(
        tmp_path, tiny_dir, tiny_ft_dir, corpus, single_adl):
    out = tmp_path / "run"
    args = adl_args(tiny_dir, tiny_ft_dir, corpus, out)
    raised = torchrun(args, **{dd.FAIL_RANK_ENV: "1"})
    assert raised.returncode != 0
    lines = error_lines(raised)
    assert len(lines) == 1, raised.stderr[-3000:]
    assert "rank 1 failed during activation collection" in lines[0]
    assert "injected failure" in lines[0] and "rerun the same command" in lines[0]
    assert not (out / "activation_diff.safetensors").exists()  # nothing half-written
    assert "collect" not in ((out / "stages.json").read_text() if (out / "stages.json").exists()
                             else "")
    died = torchrun(args, **{dd.FAIL_RANK_ENV: "1", dd.FAIL_MODE_ENV: "exit"})
    assert died.returncode != 0
    lines = error_lines(died)
    assert len(lines) == 1 and "rerun the same command" in lines[0], died.stderr[-3000:]
    again = torchrun(args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert_same_adl(out, single_adl)


def test_kl_and_pca_on_two_ranks_equal_one_process(tmp_path, tiny_dir, tiny_ft_dir, corpus,
                                                    one_thread):
    from difflens.methods.kl.result import KLResult
    from difflens.methods.pca.result import PCAResult

    common = ["--base", str(tiny_dir), "--finetuned", str(tiny_ft_dir), "--corpus", str(corpus),
              "--n-texts", "24", "--max-tokens", "16", "--batch-size", "4", "--quiet"]
    kl = ["kl", *common]
    # Both sharded passes of PCA with the readout layer chosen by the sharded first-k pass.
    pca = ["pca", *common, "--components", "3", "--readout", "2", "--contexts", "2",
           "--skip", "patchscope", "steering", "report"]
    for args, name in ((kl, "kl"), (pca, "pca")):
        assert main([*args, "--out", str(tmp_path / f"{name}-single")]) == 0
        proc = torchrun([*args, "--out", str(tmp_path / f"{name}-dist")])
        assert proc.returncode == 0, proc.stderr[-3000:]
    got, want = KLResult.load(tmp_path / "kl-dist"), KLResult.load(tmp_path / "kl-single")
    assert got.readout_layer == want.readout_layer and got.n_positions == want.n_positions
    assert got.top_contexts == want.top_contexts and got.histograms == want.histograms
    for side in ("top", "bottom"):  # the same tokens in the same order
        assert [r["id"] for r in got.fingerprint[side]] == \
            [r["id"] for r in want.fingerprint[side]]
    for name, row in want.stats.items():
        assert got.stats[name]["count"] == row["count"]
        for key in ("mean", "std", "max"):
            assert got.stats[name][key] == pytest.approx(row[key], rel=1e-9, abs=1e-12)
        assert got.stats[name]["quantiles"] == pytest.approx(row["quantiles"], rel=1e-9)
    got, want = PCAResult.load(tmp_path / "pca-dist"), PCAResult.load(tmp_path / "pca-single")
    assert got.layers == want.layers and got.n_positions == want.n_positions
    assert got.readouts == want.readouts
    for layer, row in want.pca.items():
        assert got.pca[layer]["eigenvalues"] == pytest.approx(row["eigenvalues"], rel=1e-9)
        assert got.pca[layer]["signs"] == row["signs"]
    single = json.loads((tmp_path / "pca-single" / "contexts.json").read_text(encoding="utf-8"))
    dist = json.loads((tmp_path / "pca-dist" / "contexts.json").read_text(encoding="utf-8"))
    assert dist == single


def test_torchrun_stop_is_one_error_line_that_no_stage_can_swallow(monkeypatch, capsys, tmp_path):
    """torchrun's SIGTERM after another rank failed raises ``Stopped`` on rank 0: not a
    DifflensError (a stage handling its own errors, like Diff Mining's "NMF skipped", would
    otherwise carry on), printed by the CLI as the one error line, exit 2; outside a process
    group ``leave`` just returns the code."""
    import difflens.cli as cli

    assert not issubclass(dd.Stopped, Exception)

    def stopped(command):
        raise dd.Stopped(f"stopped by torchrun after another rank failed; {dd.RESUME}")

    monkeypatch.setattr(cli, "_init_distributed", stopped)
    assert main(["weights", "--out", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"difflens: error: stopped by torchrun after another rank failed; {dd.RESUME}"]
    assert dd.leave(3) == 3
