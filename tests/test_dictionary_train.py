"""Trainer, checkpoints (bit-exact resume) and dictionary save/load."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from difflens.errors import DifflensError
from difflens.methods.dictionary import (
    Crosscoder,
    DictionaryConfig,
    DiffSAE,
    TrainConfig,
    Trainer,
    fve,
    load_dictionary,
)
from difflens.methods.dictionary.checkpoint import latest_checkpoint
from difflens.methods.dictionary.train import k_at, learning_rate_at, rebatch

pytestmark = pytest.mark.usefixtures("one_thread")


CFG = DictionaryConfig(d_in=16, width=48, k=3, dead_tokens=256, threshold_decay=0.9, seed=7)
BATCH = 64


def train_config(**overrides) -> TrainConfig:
    base = dict(steps=20, batch_size=BATCH, lr=1e-2, warmup_steps=3, decay_start=0.5,
                checkpoint_every=5, k_anneal_start=8, k_anneal_steps=10, norm_sample_rows=128,
                progress=False, log_every=3)
    return TrainConfig(**{**base, **overrides})


def chunks() -> list[torch.Tensor]:
    """2000 rows in chunks of 50, deliberately not aligned with the batch size."""
    gen = torch.Generator().manual_seed(11)
    codes = torch.relu(torch.randn(2000, 24, generator=gen) - 1.0)
    directions = torch.randn(24, 2, 16, generator=gen)
    x = torch.einsum("nl,lmd->nmd", codes, directions) * torch.tensor([1.0, 3.0])[:, None]
    return list(x.split(50))


class Interrupted(Exception):
    pass


def interrupted_after(data: list[torch.Tensor], rows: int):
    seen = 0
    for chunk in data:
        if seen >= rows:
            raise Interrupted
        seen += chunk.shape[0]
        yield chunk


def assert_same_training_state(a: Trainer, b: Trainer) -> None:
    sa, sb = a.dictionary.state_dict(), b.dictionary.state_dict()
    assert sa.keys() == sb.keys()
    for name in sa:
        assert torch.equal(sa[name], sb[name]), name
    oa, ob = a.optimizer.state_dict()["state"], b.optimizer.state_dict()["state"]
    for index in oa:
        for key in oa[index]:
            assert torch.equal(oa[index][key], ob[index][key]), (index, key)


@pytest.mark.parametrize("seekable", [False, True])
def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path, seekable):
    data = chunks()
    full = Trainer(Crosscoder(CFG), train_config(), tmp_path / "full")
    result = full.fit(data)
    assert result.step == 20 and result.resumed_from is None

    # 10.5 batches of rows, then the stream breaks: the step-10 checkpoint is the last one.
    first = Trainer(Crosscoder(CFG), train_config(), tmp_path / "resumed")
    with pytest.raises(Interrupted):
        first.fit(interrupted_after(data, 10 * BATCH + 32))
    assert first.step == 10
    assert latest_checkpoint(tmp_path / "resumed" / "checkpoints").name == "step_000000010"

    if seekable:  # a source that can start at any row: nothing is re-read
        rows = torch.cat(data)
        stream = lambda start: iter([rows[start:]])  # noqa: E731
    else:  # a plain iterable from the start: the first 10 batches are skipped
        stream = data
    second = Trainer(Crosscoder(CFG), train_config(), tmp_path / "resumed")
    resumed = second.fit(stream)
    assert resumed.resumed_from == 10 and resumed.step == 20
    assert_same_training_state(full, second)
    assert resumed.log == result.log
    # Only the newest checkpoints are kept, and no temporary files are left behind.
    kept = sorted(p.name for p in (tmp_path / "resumed" / "checkpoints").iterdir())
    assert kept == ["step_000000015", "step_000000020"]
    assert not list(tmp_path.rglob("*.tmp"))
    # The final dictionary is saved next to the checkpoints and equals the trained one.
    final = load_dictionary(tmp_path / "resumed" / "dictionary")
    for name, value in final.state_dict().items():
        assert torch.equal(value, second.dictionary.state_dict()[name])


def test_trainer_logs_fits_normalizer_and_anneals_k(tmp_path):
    trainer = Trainer(Crosscoder(CFG), train_config(checkpoint_every=0))
    result = trainer.fit(chunks())
    assert trainer.dictionary.normalizer.is_fitted
    xs = trainer.dictionary.normalizer.normalize(torch.cat(chunks())[:128])
    torch.testing.assert_close(xs.norm(dim=-1).mean(0), torch.full((2,), 4.0))
    steps = [r["step"] for r in result.log]
    assert steps == [3, 6, 9, 12, 15, 18, 20]
    first, last = result.log[0], result.log[-1]
    assert first["k"] > last["k"] == 3 and first["l0"] > last["l0"]
    assert set(first) >= {"total", "reconstruction", "auxk", "fve", "l0", "dead", "lr"}
    assert len(last["fve"]) == 2 and last["fve"][0] > 0
    # A diff-SAE trained on the same paired stream logs one FVE, that of the difference.
    sae = Trainer(DiffSAE(CFG), train_config(checkpoint_every=0))
    log = sae.fit(chunks()).log[-1]
    pairs = torch.cat(chunks())[:BATCH * 20][-BATCH:]
    expected = fve(pairs[:, 1] - pairs[:, 0], sae.dictionary.train()(pairs).reconstruction)
    assert len(log["fve"]) == 1 and abs(log["fve"][0] - float(expected)) < 0.1


def test_a_finished_run_is_not_trained_again(tmp_path):
    first = Trainer(Crosscoder(CFG), train_config(steps=6), tmp_path).fit(chunks())
    again = Trainer(Crosscoder(CFG), train_config(steps=6), tmp_path)
    result = again.fit(iter(()))  # no data needed
    assert result.step == 6 and result.resumed_from == 6 and result.log == first.log


def test_schedules():
    cfg = train_config(steps=100, warmup_steps=10, decay_start=0.8, k_anneal_start=40,
                       k_anneal_steps=20)
    lrs = [learning_rate_at(s, cfg, 1.0) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == 1.0 and lrs[79] == 1.0
    assert lrs[90] == pytest.approx(0.5) and lrs[99] == pytest.approx(0.05)
    assert [k_at(s, 4, cfg) for s in (0, 10, 20, 50)] == [40, 22, 4, 4]
    assert k_at(0, 4, train_config(k_anneal_start=None)) == 4


def test_rebatch_cuts_exact_batches_and_skips_rows():
    x = torch.arange(23.0)[:, None]
    out = list(rebatch([x[:5], x[5:6], x[6:17], x[17:]], 4, skip_rows=3))
    assert [b.shape[0] for b in out] == [4] * 5
    assert torch.equal(torch.cat(out)[:, 0], torch.arange(3.0, 23.0))


def test_data_running_out_warns_and_still_saves(tmp_path):
    trainer = Trainer(Crosscoder(CFG), train_config(steps=50), tmp_path)
    with pytest.warns(UserWarning, match="ran out"):
        result = trainer.fit(chunks()[:10])  # 500 rows = 7 batches
    assert result.step == 7
    assert latest_checkpoint(tmp_path / "checkpoints").name == "step_000000007"


def test_resume_with_another_config_is_refused(tmp_path):
    Trainer(Crosscoder(CFG), train_config(steps=5), tmp_path).fit(chunks())
    other = DictionaryConfig(**{**CFG.to_dict(), "width": 32})
    with pytest.raises(DifflensError, match="different dictionary"):
        Trainer(Crosscoder(other), train_config(steps=10), tmp_path).fit(chunks())


def test_incomplete_or_inconsistent_checkpoints(tmp_path):
    root = tmp_path / "checkpoints"
    Trainer(Crosscoder(CFG), train_config(steps=10), tmp_path).fit(chunks())
    # A crash between the two files of step 15 leaves a directory without trainer.json.
    (root / "step_000000015").mkdir()
    shutil.copy(root / "step_000000010" / "state.safetensors", root / "step_000000015")
    assert latest_checkpoint(root).name == "step_000000010"
    # State and trainer files from different steps are detected.
    shutil.copy(root / "step_000000005" / "state.safetensors", root / "step_000000010")
    with pytest.raises(DifflensError, match="from step 5"):
        Trainer(Crosscoder(CFG), train_config(steps=20), tmp_path).fit(chunks())


def test_the_same_training_run_gives_byte_identical_files(tmp_path):
    """Checkpoints (state + trainer.json) and the final dictionary: safetensors metadata in a
    fixed key order and nothing timed, so equal runs give equal bytes."""
    for name in ("a", "b"):
        Trainer(Crosscoder(CFG), train_config(steps=10), tmp_path / name).fit(chunks())
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*")
                   if p.is_file())
    assert sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*")
                  if p.is_file()) == files
    assert {p.name for p in files} == {"state.safetensors", "trainer.json",
                                       "dictionary.safetensors", "config.json"}
    for file in files:
        first = (tmp_path / "a" / file).read_bytes()
        assert first == (tmp_path / "b" / file).read_bytes(), file
        if file.suffix == ".safetensors":
            header = json.loads(first[8: 8 + int.from_bytes(first[:8], "little")])
            keys = list(header["__metadata__"])
            assert keys == sorted(keys) and len(keys) >= 2, (file, keys)
        assert b"seconds" not in first and b"elapsed" not in first, file


@pytest.mark.parametrize("cls", [Crosscoder, DiffSAE])
def test_save_load_round_trip(tmp_path, cls):
    model = cls(CFG)
    Trainer(model, train_config(steps=6, checkpoint_every=0)).fit(chunks())
    model.save(tmp_path / "dict")
    meta = json.loads((tmp_path / "dict" / "config.json").read_text())
    assert meta["format_version"] == 1 and meta["kind"] == cls.kind
    loaded = cls.load(tmp_path / "dict")
    assert type(loaded) is cls and loaded.config == CFG
    for name, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[name]), name
    x = torch.cat(chunks()[:2])
    model.eval(), loaded.eval()
    assert torch.equal(model(x).reconstruction, loaded(x).reconstruction)
    assert type(load_dictionary(tmp_path / "dict")) is cls


def test_loading_mismatched_files_raises_difflens_error(tmp_path):
    Crosscoder(CFG).save(tmp_path / "cc")
    # Wrong width: config.json says 64 latents, the weights have 48.
    meta = json.loads((tmp_path / "cc" / "config.json").read_text())
    meta["config"]["width"] = 64
    (tmp_path / "cc" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(DifflensError, match=r"W_dec has shape \(48, 2, 16\)"):
        load_dictionary(tmp_path / "cc")
    # Weights of another dictionary copied next to a config.
    Crosscoder(DictionaryConfig(d_in=16, width=64)).save(tmp_path / "ok")
    DiffSAE(DictionaryConfig(d_in=16, width=64)).save(tmp_path / "sae")
    shutil.copy(tmp_path / "sae" / "dictionary.safetensors", tmp_path / "ok")
    with pytest.raises(DifflensError, match="shape"):
        Crosscoder.load(tmp_path / "ok")
    # Kind and version checks, missing files.
    with pytest.raises(DifflensError, match="kind 'diff_sae'"):
        Crosscoder.load(tmp_path / "sae")
    meta = json.loads((tmp_path / "sae" / "config.json").read_text())
    (tmp_path / "sae" / "config.json").write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(DifflensError, match="upgrade difflens"):
        load_dictionary(tmp_path / "sae")
    with pytest.raises(DifflensError, match="not found"):
        load_dictionary(tmp_path / "missing")
    (tmp_path / "ok" / "dictionary.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(DifflensError, match="unreadable"):
        load_dictionary(tmp_path / "ok")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_training_on_cuda_matches_the_cpu_objective(tmp_path):
    trainer = Trainer(Crosscoder(CFG), train_config(device="cuda"), tmp_path)
    result = trainer.fit(chunks())
    assert result.step == 20 and trainer.dictionary.W_dec.is_cuda
    loaded = load_dictionary(tmp_path / "dictionary", device="cuda")
    assert loaded.W_dec.is_cuda


def test_cuda_request_without_gpu_is_a_user_error():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(DifflensError, match="no GPU"):
        Trainer(Crosscoder(CFG), train_config(device="cuda"))
