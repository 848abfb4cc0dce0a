"""Dense and sparse BatchTopK paths: same results, choice by measured cost, forcing, bad values."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
import torch

from difflens.errors import DifflensError
from difflens.methods.dictionary import (
    Crosscoder,
    DictionaryConfig,
    DiffSAE,
    TrainConfig,
    Trainer,
    sparse_ops,
)
from difflens.methods.dictionary import dictionary as dictionary_module
from difflens.methods.dictionary.dictionary import forget_path_timings
from difflens.methods.dictionary.sparse_ops import batch_topk, time_calls

pytestmark = pytest.mark.usefixtures("one_thread")

D, WIDTH, BATCH = 16, 64, 32


def build(kind: str, path: str = "auto", **overrides) -> Crosscoder | DiffSAE:
    fields = dict(d_in=D, width=WIDTH, k=4, aux_k=5, dead_tokens=10, seed=2)
    cfg = DictionaryConfig(**{**fields, **overrides}, compute_path=path)
    model = Crosscoder(cfg) if kind == "crosscoder" else DiffSAE(cfg)
    return mark_dead(model)


def mark_dead(model):
    """A third of the latents dead (AuxK runs), the rest just fired."""
    model.tokens_since_fired.zero_()[torch.arange(WIDTH) % 3 == 0] = 10
    return model


def batch(kind: str, seed: int = 1, rows: int = BATCH) -> torch.Tensor:
    x = torch.randn(rows, 2, D, generator=torch.Generator().manual_seed(seed))
    return x if kind == "crosscoder" else x[:, 1] - x[:, 0]


def step(model, x):
    """One training forward + backward: the output, the parameter gradients, the buffers."""
    out = model.train()(x)
    out.losses.total.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    return out, grads, {name: b.clone() for name, b in model.named_buffers()}


@pytest.fixture(autouse=True)
def fresh_timings():
    forget_path_timings()
    yield
    forget_path_timings()


@pytest.mark.parametrize("kind", ["crosscoder", "diff_sae"])
def test_dense_and_sparse_paths_give_the_same_step(kind):
    x = batch(kind)
    dense_out, dense_grads, dense_buffers = step(build(kind, "dense"), x)
    sparse_out, sparse_grads, sparse_buffers = step(build(kind, "sparse"), x)

    assert float(dense_out.losses.auxk.detach()) > 0  # the AuxK branch is exercised on both paths
    # The selection is identical, so the latents are bit-equal (same encoder matmul).
    assert torch.equal(dense_out.latents, sparse_out.latents)
    assert 0 < int((dense_out.latents > 0).sum()) <= 4 * BATCH
    torch.testing.assert_close(dense_out.reconstruction, sparse_out.reconstruction)
    for name in dense_out.losses._fields:
        torch.testing.assert_close(getattr(dense_out.losses, name),
                                   getattr(sparse_out.losses, name))
    for name, grad in dense_grads.items():
        assert float(grad.abs().max()) > 0, name
        torch.testing.assert_close(grad, sparse_grads[name], atol=1e-6, rtol=1e-5)
    # Dead-latent counters and the inference threshold θ move the same way.
    for name, buffer in dense_buffers.items():
        assert torch.equal(buffer, sparse_buffers[name]), name
    assert float(dense_buffers["threshold"]) > 0


@pytest.mark.parametrize("kind", ["crosscoder", "diff_sae"])
def test_dense_and_sparse_paths_agree_in_eval(kind):
    dense, sparse = build(kind, "dense"), build(kind, "sparse")
    for model in (dense, sparse):
        with torch.no_grad():
            model.train()(batch(kind))  # sets θ to this batch's cutoff
    x = batch(kind, seed=5)
    with torch.no_grad():
        a, b = dense.eval()(x), sparse.eval()(x)
    assert torch.equal(a.latents, b.latents) and int((a.latents > 0).sum()) > 0
    torch.testing.assert_close(a.reconstruction, b.reconstruction)


def test_auto_measures_on_the_real_batch_and_changes_nothing(monkeypatch):
    calls = []

    def counted(fns, device, **rounds):
        calls.append(sorted(fns))
        return time_calls(fns, device, **rounds)

    monkeypatch.setattr(dictionary_module, "time_calls", counted)
    auto = build("crosscoder")
    before = {name: p.detach().clone() for name, p in auto.named_parameters()}
    x = batch("crosscoder")
    out, grads, buffers = step(auto, x)

    assert calls == [["dense", "sparse"]]
    ((key, choice),) = auto.path_choice.items()
    assert key == f"B={BATCH} F={WIDTH} D={2 * D} k<=4 dead<=32 aux_k=5 cpu float32"
    assert choice["source"] == "measured" and choice["path"] in ("dense", "sparse")
    assert choice["dense_ms"] > 0 and choice["sparse_ms"] > 0
    faster = min(("dense", "sparse"), key=lambda p: choice[f"{p}_ms"])
    assert choice["path"] == faster

    # The trials left no trace: the step equals one of the chosen path alone, bit for bit.
    forced = build("crosscoder", choice["path"])
    for name, p in forced.named_parameters():
        assert torch.equal(p.detach(), before[name]), name
    ref_out, ref_grads, ref_buffers = step(forced, x)
    assert torch.equal(out.losses.total, ref_out.losses.total)
    assert torch.equal(out.reconstruction, ref_out.reconstruction)
    for name in grads:
        assert torch.equal(grads[name], ref_grads[name]), name
    for name in buffers:
        assert torch.equal(buffers[name], ref_buffers[name]), name

    # Same key again, or another dictionary of the same shape: no new measurement.
    mark_dead(auto)(x)
    other = build("crosscoder")
    step(other, x)
    assert len(calls) == 1
    assert other.path_choice[key] == {**choice, "source": "reused"}
    # k annealing within the same power-of-two bucket (3 -> 4) reuses it; k = 5 measures again.
    mark_dead(auto)(x, k=3)
    assert len(calls) == 1
    mark_dead(auto)(x, k=5)
    assert len(calls) == 2 and len(auto.path_choice) == 2
    # So does a number of dead latents in another power-of-two bucket (22 -> 64 of 64).
    auto.tokens_since_fired.fill_(10)
    auto(x)
    assert len(calls) == 3 and any("dead<=64" in key for key in auto.path_choice)
    # Eval and no-grad forwards never measure (they take the sparse path).
    with torch.no_grad():
        auto.train()(batch("crosscoder", rows=BATCH + 1))
    auto.eval()(batch("crosscoder", rows=BATCH + 2))
    assert len(calls) == 3


@pytest.mark.parametrize(("dense_s", "sparse_s", "expected"),
                         [(0.001, 0.002, "dense"), (0.002, 0.001, "sparse")])
def test_auto_keeps_the_path_measured_faster(monkeypatch, dense_s, sparse_s, expected):
    taken = []
    real = dictionary_module.SparseDictionary._batchtopk

    def spy(self, xn, k, path, *, update=True):
        if update:  # the real step, not a timing trial
            taken.append(path)
        return real(self, xn, k, path, update=update)

    monkeypatch.setattr(dictionary_module, "time_calls",
                        lambda fns, device, **rounds: {"dense": dense_s, "sparse": sparse_s})
    monkeypatch.setattr(dictionary_module.SparseDictionary, "_batchtopk", spy)
    model = build("diff_sae")
    step(model, batch("diff_sae"))
    step(mark_dead(model), batch("diff_sae", seed=2))
    assert taken == [expected, expected]
    (choice,) = model.path_choice.values()
    assert choice == {"path": expected, "source": "measured", "dense_ms": dense_s * 1000,
                      "sparse_ms": sparse_s * 1000}


@pytest.mark.parametrize("path", ["dense", "sparse"])
def test_a_forced_path_is_taken_without_measuring(monkeypatch, path):
    def refuse(*args, **kwargs):
        raise AssertionError("a forced path must not be timed")

    monkeypatch.setattr(dictionary_module, "time_calls", refuse)
    model = build("crosscoder", path)
    step(model, batch("crosscoder"))
    (choice,) = model.path_choice.values()
    assert choice == {"path": path, "source": "forced"}


def test_data_parallel_trials_make_a_fixed_number_of_collective_calls(monkeypatch):
    """Under data parallelism every selection is a collective call: a close call must not
    make one rank run more trial rounds than another (they would wait for each other)."""
    rounds_asked, selects = [], []

    class Group:  # a one-process stand-in for train.RankGroup
        def select(self, scores, k_total, hint):
            selects.append(k_total)
            return batch_topk(scores, k_total, hint)

        def stats(self, fired, rows, cutoff):
            return fired, rows, cutoff

    def counted(fns, device, **rounds):
        rounds_asked.append(rounds)
        return time_calls(fns, device, **rounds)

    monkeypatch.setattr(dictionary_module, "time_calls", counted)
    model = build("crosscoder")
    model.batch_group = Group()
    step(model, batch("crosscoder"))
    assert rounds_asked == [{"repeats": 3, "max_repeats": 3}]
    assert len(selects) == 2 * (1 + 3) + 1  # (warm-up + 3 rounds) per path, then the step


def test_auto_training_equals_training_on_the_chosen_path():
    """Through the trainer (Adam, k annealing, dead latents appearing): the measurements do
    not change the run."""
    x = torch.randn(1024, 2, D, generator=torch.Generator().manual_seed(3))
    cfg = TrainConfig(steps=12, batch_size=64, lr=1e-2, warmup_steps=2, k_anneal_start=8,
                      k_anneal_steps=6, norm_sample_rows=128, progress=False, log_every=4)
    auto = build("crosscoder", dead_tokens=256)
    auto.tokens_since_fired.zero_()
    Trainer(auto, cfg).fit(list(x.split(100)))
    assert {c["source"] for c in auto.path_choice.values()} == {"measured"}
    assert len(auto.path_choice) >= 2  # k 8 -> 4 crosses a bucket; latents die after 4 steps
    # Replay the run with every key forced to the path auto took for it.
    paths = {key: c["path"] for key, c in auto.path_choice.items()}
    replay = build("crosscoder", dead_tokens=256)
    replay.tokens_since_fired.zero_()
    replay.path_choice = {key: {"path": p, "source": "restored"} for key, p in paths.items()}
    Trainer(replay, cfg).fit(list(x.split(100)))
    for (name, a), b in zip(auto.state_dict().items(), replay.state_dict().values(),
                            strict=True):
        assert torch.equal(a, b), name


def test_l1_dictionaries_ignore_the_path(monkeypatch):
    monkeypatch.setattr(dictionary_module, "time_calls", lambda *a, **k: 1 / 0)
    model = build("crosscoder", sparsity="l1")
    out, _, _ = step(model, batch("crosscoder"))
    assert model.path_choice == {} and float(out.losses.sparsity.detach()) > 0


@pytest.mark.parametrize(("a_cost", "rounds"), [(5.0, 3), (2.1, 9)])
def test_time_calls_keeps_the_fastest_round_and_looks_closer_at_close_calls(
    monkeypatch, a_cost, rounds
):
    """A fake clock: "b" costs 2 s, but its first two timed rounds are slowed to 20 s (a busy
    machine); "a" costs ``a_cost``.  A clear gap stops after 3 rounds, a close one runs 9."""
    clock, counts = [0.0], {"a": 0, "b": 0}

    def make(name):
        def call():
            counts[name] += 1
            clock[0] += a_cost if name == "a" else (20.0 if counts[name] in (2, 3) else 2.0)
        return call

    monkeypatch.setattr(sparse_ops, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    seconds = time_calls({"a": make("a"), "b": make("b")}, torch.device("cpu"))
    assert counts == {"a": 1 + rounds, "b": 1 + rounds}  # one untimed warm-up call each
    assert seconds == pytest.approx({"a": a_cost, "b": 2.0})


def test_bad_compute_path_is_a_one_line_error():
    with pytest.raises(DifflensError, match="compute_path must be one of auto, dense, sparse; "
                                            "got 'fast'") as info:
        DictionaryConfig(d_in=8, width=16, compute_path="fast")  # type: ignore[arg-type]
    assert "\n" not in str(info.value)
    cfg = DictionaryConfig(d_in=8, width=16, compute_path="dense")
    assert DictionaryConfig.from_dict(cfg.to_dict()) == cfg
    old = {k: v for k, v in cfg.to_dict().items() if k != "compute_path"}  # an older config
    assert DictionaryConfig.from_dict(old).compute_path == "auto"
    assert dataclasses.replace(cfg, compute_path="sparse").compute_path == "sparse"


def test_ranks_decide_on_summed_timings(monkeypatch):
    """Under data parallelism the choice is one decision for the group: the timings are summed
    over the ranks (RankGroup.agree), so a rank that measured dense faster alone still takes
    the path the group measured faster."""
    from difflens.methods.dictionary.train import RankGroup

    # This rank: dense 1 ms, sparse 2 ms; the other rank: dense 9 ms, sparse 2 ms.
    other = torch.tensor([0.009, 0.002], dtype=torch.float64)  # sorted names: dense, sparse

    def reduce(t):  # the timings get the other rank's; the fired counters are doubled
        return t + other if t.dtype == torch.float64 else t * 2

    group = RankGroup(2, gather=lambda t: torch.cat([t, t]), reduce=reduce)
    monkeypatch.setattr(dictionary_module, "time_calls",
                        lambda fns, device, **rounds: {"dense": 0.001, "sparse": 0.002})
    model = build("crosscoder")
    model.batch_group = group
    step(model, batch("crosscoder"))
    (choice,) = model.path_choice.values()
    assert choice["path"] == "sparse" and choice["dense_ms"] == 5.0


def test_a_resumed_run_takes_the_paths_of_the_interrupted_one(tmp_path, monkeypatch):
    """The choices are saved in every checkpoint and restored on resume (a new process would
    otherwise measure again and might take the other path)."""
    x = torch.randn(1024, 2, D, generator=torch.Generator().manual_seed(3))
    cfg = TrainConfig(steps=4, batch_size=64, lr=1e-2, warmup_steps=1, norm_sample_rows=128,
                      progress=False, checkpoint_every=2)
    first = build("crosscoder")
    result = Trainer(first, cfg, tmp_path).fit(list(x.split(100)))
    assert result.paths == first.path_choice and result.paths
    forget_path_timings()  # as in a new process
    measured = []
    real = dictionary_module.SparseDictionary._measure_paths

    def spy(self, xn, k):
        measured.append(self._path_key(xn, k))
        return real(self, xn, k)

    monkeypatch.setattr(dictionary_module.SparseDictionary, "_measure_paths", spy)
    again = build("crosscoder")
    more = dataclasses.replace(cfg, steps=6)
    resumed = Trainer(again, more, tmp_path).fit(list(x.split(100)))
    assert resumed.resumed_from == 4
    for key, choice in first.path_choice.items():  # restored as saved, never measured again
        assert again.path_choice[key] == choice and key not in measured
