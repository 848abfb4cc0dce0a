"""The weight-space lens on tiny random-init models: planted low-rank ΔW recovered exactly,
LoRA factors vs the dense computation, a model with itself, resume, bad input."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from difflens.cli import main
from difflens.errors import DifflensError
from difflens.methods.weights.config import WeightsConfig
from difflens.methods.weights.core import dense_delta_svd, lora_delta_svd
from difflens.methods.weights.result import WeightsResult, weights_tokens
from difflens.methods.weights.runner import run_weights
from tiny import save_tiny

pytestmark = pytest.mark.usefixtures("one_thread")

# (write module, read module) per family, as stored in the checkpoint.
PLANT = {
    "llama": ("model.layers.2.mlp.down_proj", "model.layers.1.mlp.up_proj"),
    "gemma3": ("model.layers.2.self_attn.o_proj", "model.layers.1.mlp.gate_proj"),
    "gpt2": ("transformer.h.2.mlp.c_proj", "transformer.h.1.mlp.c_fc"),
    "gpt_neox": ("gpt_neox.layers.2.mlp.dense_4h_to_h",
                 "gpt_neox.layers.1.attention.query_key_value"),
}
TARGET_IDS = [57, 123, 301]  # the tokens the planted residual direction is built from


# ---- pure cores -----------------------------------------------------------------------------
def test_lora_factor_svd_equals_the_dense_svd():
    torch.manual_seed(0)
    A, B, scale = torch.randn(6, 50), torch.randn(40, 6), 2.5
    got = lora_delta_svd(A, B, scale)
    dense = scale * B.double() @ A.double()
    want = torch.linalg.svdvals(dense)
    assert torch.allclose(got.S.double(), want[:6], rtol=1e-5)
    assert got.norm == pytest.approx(float(torch.linalg.matrix_norm(dense)), rel=1e-6)
    rebuilt = got.U.double() @ torch.diag(got.S.double()) @ got.V.double().T
    assert torch.allclose(rebuilt, dense, atol=1e-4)
    assert torch.allclose(got.U.T @ got.U, torch.eye(6), atol=1e-5)  # orthonormal columns
    ref = dense_delta_svd(dense.float(), 6)
    assert torch.allclose(ref.S, got.S, rtol=1e-4)


def test_lora_path_never_allocates_a_dense_delta():
    """d_out = d_in = 300,000 at r = 4: the dense ΔW would be 360 GB of float32; the factor path
    needs O((d_out + d_in)·r) and returns the exact singular values."""
    torch.manual_seed(0)
    d, r = 300_000, 4
    A, B = torch.randn(r, d) / d ** 0.5, torch.randn(d, r) / d ** 0.5
    got = lora_delta_svd(A, B, 2.0)
    assert got.U.shape == (d, r) and got.V.shape == (d, r)
    # σ² are the eigenvalues of (sB A)(sB A)ᵀ restricted to span(B): those of s²(BᵀB)(AAᵀ).
    gram = 4.0 * (B.double().T @ B.double()) @ (A.double() @ A.double().T)
    want = torch.linalg.eigvals(gram).real.clamp(min=0).sqrt().sort(descending=True).values
    assert torch.allclose(got.S.double(), want, rtol=1e-6)


# ---- planted rank-1 ΔW ----------------------------------------------------------------------
def _plant(base_dir, out_dir, module: str, vector: torch.Tensor, sigma: float, write: bool,
           tokenizer) -> torch.Tensor:
    """Copy ``base_dir`` to ``out_dir`` with ΔW = σ·u·vᵀ added to ``module``; the residual-side
    vector is ``vector`` (u for a writer, v for a reader).  Returns the other unit vector."""
    from transformers import AutoModelForCausalLM
    from transformers.pytorch_utils import Conv1D

    model = AutoModelForCausalLM.from_pretrained(base_dir)
    mod = model.get_submodule(module)
    conv = isinstance(mod, Conv1D)
    d_out, d_in = mod.weight.shape[::-1] if conv else mod.weight.shape
    torch.manual_seed(1)
    other = torch.randn(d_in if write else d_out)
    other /= other.norm()
    u, v = (vector, other) if write else (other, vector)
    delta = sigma * torch.outer(u, v)  # (d_out, d_in)
    with torch.no_grad():
        mod.weight += delta.T if conv else delta
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return other


def _base_and_direction(path, family, tokenizer) -> tuple:
    """A tiny base whose target tokens' unembedding rows are 4× longer than the others (at
    d = 32 the sum of three random rows is otherwise not far enough from the other 397), and
    the unit direction built from those rows."""
    from transformers import AutoModelForCausalLM

    save_tiny(path, family, 0, tokenizer)
    model = AutoModelForCausalLM.from_pretrained(path)
    weight = model.get_output_embeddings().weight
    with torch.no_grad():
        weight[TARGET_IDS] *= 4.0
    model.save_pretrained(path)
    direction = weight.detach()[TARGET_IDS].sum(0)
    return path, direction / direction.norm()


@pytest.mark.parametrize("family", sorted(PLANT))
@pytest.mark.parametrize("side", ["write", "read"])
def test_planted_rank_one_delta_is_found_exactly(family, side, tmp_path, tokenizer):
    base, direction = _base_and_direction(tmp_path / "base", family, tokenizer)
    module = PLANT[family][0 if side == "write" else 1]
    _plant(base, tmp_path / "ft", module, direction, 3.0, side == "write", tokenizer)
    summary = run_weights(WeightsConfig(base=str(base), finetuned=str(tmp_path / "ft")),
                          tmp_path / "run", progress=False)
    assert summary["method"] == "full" and summary["n_changed"] == 1
    top = summary["top_modules"][0]
    assert top["name"] == module and top["role"] == side
    assert top["sigma"][0] == pytest.approx(3.0, rel=1e-5)
    assert top["sigma"][1] == pytest.approx(0.0, abs=1e-5)
    assert top["stable_rank"] == pytest.approx(1.0, rel=1e-4)
    assert all(row["norm"] == 0.0 for row in summary["top_modules"][1:])
    [readout] = summary["readouts"]
    vec = readout["vectors"][0]
    best = vec[vec["best"]]
    assert sorted(best["ids"][:3]) == TARGET_IDS  # the tokens u was built from, best sign
    other = vec["-" if vec["best"] == "+" else "+"]
    assert not set(other["ids"][:3]) & set(TARGET_IDS)
    tokens = weights_tokens(tmp_path / "run", 3)
    assert sorted(tokenizer.convert_tokens_to_ids(
        [tokenizer.convert_ids_to_tokens(i) for i in TARGET_IDS])) == TARGET_IDS
    assert set(tokens) == set(tokenizer.decode([i]) for i in TARGET_IDS)
    heat = summary["heatmap"]
    assert heat["layers"] == [0, 1, 2, 3]
    values = [v for row in heat["values"] for v in row if v]
    assert len(values) == 1 and values[0] == pytest.approx(top["norm"])


def test_every_layer_linear_gets_a_residual_role(tmp_path, tokenizer):
    from difflens.methods.weights.checkpoint import Checkpoint
    from difflens.methods.weights.diff import plan_full

    for family in ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "gpt2", "gpt_neox"):
        path = save_tiny(tmp_path / family, family, 0, tokenizer)
        ckpt = Checkpoint(path, family)
        plan = plan_full(ckpt, ckpt)
        assert {job.layer for job in plan.jobs} == {0, 1, 2, 3}
        roles = {job.kind: job.role for job in plan.jobs}
        assert None not in roles.values(), (family, roles)
        writes = {k.rsplit(".", 1)[-1] for k, r in roles.items() if r == "write"}
        assert writes in ({"o_proj", "down_proj"}, {"c_proj"}, {"dense", "dense_4h_to_h"}), \
            (family, writes)


# ---- LoRA factors vs dense ------------------------------------------------------------------
def _adapter(tmp_path, family, tokenizer, rslora=False, init=False):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = save_tiny(tmp_path / "base", family, 0, tokenizer)
    model = AutoModelForCausalLM.from_pretrained(base)
    targets = ["c_attn", "c_proj", "c_fc"] if family == "gpt2" else \
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    torch.manual_seed(2)
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=12, target_modules=targets,
                                            init_lora_weights=init, use_rslora=rslora,
                                            fan_in_fan_out=family == "gpt2"))
    peft.save_pretrained(tmp_path / "adapter")
    merged = peft.merge_and_unload()
    merged.save_pretrained(tmp_path / "merged")
    tokenizer.save_pretrained(tmp_path / "merged")
    return base


@pytest.mark.parametrize(("family", "rslora"), [("llama", False), ("llama", True),
                                                ("gpt2", False)])
def test_lora_factors_agree_with_the_merged_dense_delta(family, rslora, tmp_path, tokenizer):
    base = _adapter(tmp_path, family, tokenizer, rslora)
    cfg = {"base": str(base), "readout_modules": 3}
    lora = run_weights(WeightsConfig(finetuned=str(tmp_path / "adapter"), **cfg),
                       tmp_path / "lora", progress=False)
    dense = run_weights(WeightsConfig(finetuned=str(tmp_path / "merged"), **cfg),
                        tmp_path / "dense", progress=False)
    assert lora["method"] == "lora" and dense["method"] == "full"
    a = {r["name"]: r for r in WeightsResult.load(tmp_path / "lora").modules()}
    b = {r["name"]: r for r in WeightsResult.load(tmp_path / "dense").modules()}
    assert set(a) == set(b) and len(a) == 4 * (4 if family == "gpt2" else 7)
    for name, row in a.items():
        assert row["rank"] == 4
        assert row["norm"] == pytest.approx(b[name]["norm"], rel=1e-3), name
        assert row["base_norm"] == pytest.approx(b[name]["base_norm"], rel=1e-5)
        assert row["sigma"][:4] == pytest.approx(b[name]["sigma"][:4], rel=1e-3, abs=1e-5)
        assert row["stable_rank"] == pytest.approx(b[name]["stable_rank"], rel=1e-2)
    assert [r["module"] for r in lora["readouts"]] == [r["module"] for r in dense["readouts"]]
    for x, y in zip(lora["readouts"], dense["readouts"], strict=True):
        vx, vy = x["vectors"][0], y["vectors"][0]
        assert {tuple(vx["+"]["ids"][:5]), tuple(vx["-"]["ids"][:5])} == \
            {tuple(vy["+"]["ids"][:5]), tuple(vy["-"]["ids"][:5])}  # same up to the sign


# ---- no difference --------------------------------------------------------------------------
def test_a_model_with_itself_is_no_difference(tmp_path, tiny_dir):
    summary = run_weights(WeightsConfig(base=str(tiny_dir), finetuned=str(tiny_dir)),
                          tmp_path / "run", progress=False)
    assert summary["no_difference"] and summary["n_changed"] == 0
    assert summary["max_norm"] == 0.0 and summary["readouts"] == []
    assert all(r["norm"] == 0.0 and r["stable_rank"] == 0.0
               for r in WeightsResult.load(tmp_path / "run").modules())
    assert weights_tokens(tmp_path / "run") == []
    from difflens.report.page import render_report

    assert "No difference between the models" in render_report(tmp_path / "run").read_text()


def test_an_untrained_adapter_is_no_difference(tmp_path, tokenizer):
    base = _adapter(tmp_path, "llama", tokenizer, init=True)  # PEFT init: B = 0
    summary = run_weights(WeightsConfig(base=str(base), finetuned=str(tmp_path / "adapter")),
                          tmp_path / "run", progress=False)
    assert summary["method"] == "lora" and summary["no_difference"]


# ---- resume, report, CLI --------------------------------------------------------------------
def test_resume_reuses_finished_stages(tmp_path, tiny_dir, tiny_ft_dir, monkeypatch):
    import difflens.methods.weights.runner as runner

    config = WeightsConfig(base=str(tiny_dir), finetuned=str(tiny_ft_dir), readout_modules=2)
    first = run_weights(config, tmp_path / "run", progress=False)
    assert first["n_changed"] == first["n_modules"] == 28

    def boom(*args, **kwargs):
        raise AssertionError("a finished stage was recomputed")

    monkeypatch.setattr(runner, "_diff", boom)
    monkeypatch.setattr(runner, "_readouts", boom)
    again = run_weights(config, tmp_path / "run", progress=False)
    assert again["top_modules"] == first["top_modules"] and again["readouts"] == first["readouts"]
    # Interrupted after the diff: only the readouts are computed again.
    stages = json.loads((tmp_path / "run" / "stages.json").read_text())
    del stages["readouts"]
    (tmp_path / "run" / "stages.json").write_text(json.dumps(stages))
    (tmp_path / "run" / "readouts.json").unlink()
    monkeypatch.undo()
    monkeypatch.setattr(runner, "_diff", boom)
    resumed = run_weights(config, tmp_path / "run", progress=False)
    assert resumed["readouts"] == first["readouts"]


def test_report_escapes_model_text(tmp_path, tiny_dir, tiny_ft_dir):
    from difflens.report.page import render_report

    run_weights(WeightsConfig(base=str(tiny_dir), finetuned=str(tiny_ft_dir),
                              readout_modules=1), tmp_path / "run", progress=False)
    path = tmp_path / "run" / "summary.json"
    data = json.loads(path.read_text())
    data["readouts"][0]["vectors"][0]["+"]["tokens"][0] = "<script>alert(1)</script>"
    path.write_text(json.dumps(data))
    html = render_report(tmp_path / "run").read_text()
    assert "<script>alert" not in html and "&lt;script&gt;alert" in html
    assert html.count("<svg") == 1 and html.count("<rect") == 4 * 7  # layers × kinds


def test_cli_runs_and_prints_the_summary(tmp_path, tiny_dir, tiny_ft_dir, capsys):
    out = tmp_path / "run"
    code = main(["weights", "--base", str(tiny_dir), "--finetuned", str(tiny_ft_dir),
                 "--quiet", "--out", str(out), "--readout-modules", "2", "--rank-by",
                 "relative"])
    text = capsys.readouterr().out
    assert code == 0 and "Weight-space lens" in text and "report:" in text
    result = WeightsResult.load(out)
    assert result.rank_by == "relative" and len(result.readouts) == 2
    scores = [row["score"] for row in result.top_modules]
    assert scores == sorted(scores, reverse=True)
    assert (out / "report.html").exists()


# ---- bad input ------------------------------------------------------------------------------
def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if "Loading weights" not in line]
    assert "Traceback" not in err and len(lines) == 1, err
    assert lines[0].startswith("difflens: error: ")
    return lines[0]


def _rewrite_adapter(src, dst, rename):
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    tensors = load_file(dst / "adapter_model.safetensors")
    save_file({rename(k): v for k, v in tensors.items()}, dst / "adapter_model.safetensors")


@pytest.mark.parametrize(("case", "needle"), [
    ("no_factors", "holds no LoRA factors"),
    ("foreign_module", "which the base"),
    ("dora", "DoRA adapter"),
    ("architecture", "differ in architecture"),
])
def test_bad_pairs_are_one_line_and_write_nothing(case, needle, tmp_path, tokenizer, capsys):
    base = _adapter(tmp_path, "llama", tokenizer)
    ft = tmp_path / "bad"
    if case == "no_factors":
        _rewrite_adapter(tmp_path / "adapter", ft, lambda k: k.replace("lora_", "other_"))
    elif case == "foreign_module":
        _rewrite_adapter(tmp_path / "adapter", ft, lambda k: k.replace("q_proj", "z_proj"))
    elif case == "dora":
        shutil.copytree(tmp_path / "adapter", ft)
        cfg = json.loads((ft / "adapter_config.json").read_text())
        (ft / "adapter_config.json").write_text(json.dumps({**cfg, "use_dora": True}))
    else:
        save_tiny(ft, "gpt2", 0, tokenizer)
    out = tmp_path / "run"
    capsys.readouterr()  # the set-up's save bars
    assert main(["weights", "--base", str(base), "--finetuned", str(ft), "--quiet",
                 "--out", str(out)]) == 2
    assert needle in _one_line(capsys)
    assert not out.exists()


def test_gguf_full_finetune_is_one_line(tmp_path):
    from difflens.methods.weights.sources import resolve_pair

    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"GGUF")
    with pytest.raises(DifflensError, match="needs safetensors checkpoints"):
        resolve_pair(None, str(fake))


def test_different_vocabularies_use_the_shared_ids_with_a_note(tmp_path, tiny_dir, tokenizer):
    from transformers import AutoModelForCausalLM

    from tiny import tiny_tokenizer

    ft = tmp_path / "ft"
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    with torch.no_grad():
        model.model.layers[3].mlp.down_proj.weight.mul_(1.5)
    model.save_pretrained(ft)
    other = tiny_tokenizer()
    # Swap two ids: same size, different vocabulary.
    vocab = other.get_vocab()
    a, b = sorted(vocab, key=vocab.get)[100:102]
    data = json.loads(other.backend_tokenizer.to_str())
    data["model"]["vocab"][a], data["model"]["vocab"][b] = vocab[b], vocab[a]
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    swapped = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(data)),
                                      bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    swapped.save_pretrained(ft)
    summary = run_weights(WeightsConfig(base=str(tiny_dir), finetuned=str(ft),
                                        top_tokens=50), tmp_path / "run", progress=False)
    assert any("vocabularies differ" in note and "398 ids" in note
               for note in summary["notes"]), summary["notes"]
    shown = {i for r in summary["readouts"] for v in r["vectors"] for s in "+-"
             for i in v[s]["ids"]}
    assert shown and not shown & {vocab[a], vocab[b]}
