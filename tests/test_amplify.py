"""Logit-diff amplification on tiny random-init pairs: exactness at α = 0 / −1, a planted logit
bias surfaced, batch independence, the LoRA pair's one weight copy, the run and its bad input."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from difflens.cli import main
from difflens.models.amplify import amplified_rows, generate_amplified
from difflens.models.generation import SamplingConfig, generate
from difflens.models.pair import BASE, ModelPair
from tiny import tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPTS = ["The quick brown", "A river runs", "Cake batter with flour and", "She wrote",
           "Engines, wheels"]
SAMPLING = SamplingConfig(max_new_tokens=16, temperature=1.0, top_p=0.95, top_k=50, seed=3)


@pytest.fixture(scope="module", params=["llama", "gemma3", "gpt2"])
def pair(request, tokenizer):
    return ModelPair.from_models(tiny_model(request.param, 0), tiny_model(request.param, 1),
                                 tokenizer)


def test_alpha_zero_is_plain_finetuned_sampling(pair):
    keys = [7, 3, 11, 0, 5]
    plain = generate(pair, PROMPTS, SAMPLING, keys=keys)
    amped = generate_amplified(pair, PROMPTS, 0.0, SAMPLING, keys=keys)
    assert amped.texts == plain.texts
    assert amped.new_tokens == plain.new_tokens
    assert len(set(amped.texts)) > 1  # real, varied samples


def test_alpha_minus_one_is_plain_base_sampling(pair):
    plain = generate(pair, PROMPTS, SAMPLING, side=BASE)
    amped = generate_amplified(pair, PROMPTS, -1.0, SAMPLING)
    assert amped.texts == plain.texts
    assert amped.texts != generate(pair, PROMPTS, SAMPLING).texts  # the two sides differ


def test_greedy_alpha_zero_matches_too(pair):
    greedy = SAMPLING.replace(do_sample=False)
    assert (generate_amplified(pair, PROMPTS, 0.0, greedy).texts
            == generate(pair, PROMPTS, greedy).texts)


def test_rows_do_not_depend_on_their_batch(pair):
    rows, alphas, keys = amplified_rows(PROMPTS, [0.0, 1.5, 4.0])
    mixed = generate_amplified(pair, rows, alphas, SAMPLING, keys, batch_size=len(rows))
    for i in (1, 7, 13):  # one row per strength, alone
        alone = generate_amplified(pair, [rows[i]], [alphas[i]], SAMPLING, [keys[i]])
        assert alone.texts[0] == mixed.texts[i]
    chunked = generate_amplified(pair, rows, alphas, SAMPLING, keys, batch_size=4)
    assert chunked.texts == mixed.texts


def test_planted_logit_bias_is_surfaced(tokenizer):
    """The finetune adds +1.5 to the logits of 20 word tokens; at α the bias is (1 + α) × 1.5,
    so amplified samples use those words strictly more often than the plain finetune's."""
    base = tiny_model("llama", 0)
    ft = copy.deepcopy(base)
    words = [i for i in range(len(tokenizer))
             if len(tokenizer.decode([i]).strip()) >= 4 and tokenizer.decode([i]).strip().isalpha()]
    planted = torch.tensor(words[:20])
    bias = torch.zeros(base.config.vocab_size)
    bias[planted] = 1.5
    ft.lm_head.bias = torch.nn.Parameter(bias)
    pair = ModelPair.from_models(base, ft, tokenizer)
    prompts = PROMPTS * 4
    sampling = SAMPLING.replace(max_new_tokens=24)
    pieces = [tokenizer.decode([i]).strip() for i in planted.tolist()]

    def count(alpha: float) -> int:
        texts = generate_amplified(pair, prompts, alpha, sampling).texts
        return sum(text.count(piece) for text in texts for piece in pieces)

    counts = {a: count(a) for a in (0.0, 1.0, 3.0)}
    assert counts[0.0] < counts[1.0] < counts[3.0], counts
    assert counts[3.0] > 1.25 * counts[0.0], counts  # measured 517 → 666 → 700


def test_lora_pair_keeps_one_weight_copy_and_matches_two_models(tmp_path, tiny_dir, tokenizer):
    from peft import LoraConfig, PeftModel, get_peft_model

    from difflens.models.loading import LoadOptions, load_causal_lm

    torch.manual_seed(0)
    model, _ = load_causal_lm(tiny_dir, LoadOptions())
    lora = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, init_lora_weights=False,
                                            target_modules=["q_proj", "v_proj", "down_proj"]))
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)
    lora.save_pretrained(tmp_path / "adapter")
    shared = ModelPair.load(tiny_dir, tmp_path / "adapter")
    assert shared.adapter and shared.base_model is shared.ft_model
    storages = {p.untyped_storage().data_ptr() for p in shared.ft_model.parameters()}
    before = len(storages)
    sampling = SAMPLING.replace(max_new_tokens=12)
    one = generate_amplified(shared, PROMPTS, [0.0, 2.0, 2.0, 5.0, -1.0], sampling)
    after = {p.untyped_storage().data_ptr() for p in shared.ft_model.parameters()}
    assert after == storages and len(after) == before  # nothing was copied

    base, _ = load_causal_lm(tiny_dir, LoadOptions())
    ft_base, _ = load_causal_lm(tiny_dir, LoadOptions())
    ft = PeftModel.from_pretrained(ft_base, str(tmp_path / "adapter")).eval()
    two = ModelPair.from_models(base, ft, tokenizer)
    separate = generate_amplified(two, PROMPTS, [0.0, 2.0, 2.0, 5.0, -1.0], sampling)
    assert one.texts == separate.texts
    plain_ft = generate(two, PROMPTS, sampling)
    assert one.texts[0] == plain_ft.texts[0]


def test_heads_of_different_sizes_sample_the_shared_vocabulary(tokenizer):
    """A finetune whose head grew (extra tokens) is a note, not an error."""
    pair = ModelPair(tiny_model("llama", 0), tiny_model("llama", 1, vocab_size=416), tokenizer,
                     "base", "ft")
    gens = generate_amplified(pair, PROMPTS[:2], 2.0, SAMPLING)
    assert gens.vocab == 400 and "416" in gens.note and "400 shared" in gens.note
    ids = [tokenizer.encode(t, add_special_tokens=False) for t in gens.texts]
    assert all(i < 400 for r in ids for i in r)


@pytest.mark.parametrize("alpha", [float("nan"), float("inf"), -2.0, 101.0])
def test_bad_strength_is_a_one_line_error(pair, alpha):
    from difflens.errors import DifflensError

    with pytest.raises(DifflensError, match="finite and in"):
        generate_amplified(pair, PROMPTS[:1], alpha, SAMPLING)


# ---- the method -------------------------------------------------------------------------------
SMALL = ["--prompts", "3", "--samples-per-prompt", "2", "--max-new-tokens", "6",
         "--alphas", "0", "2", "--search-prompts", "2", "--alpha-max", "2", "--tolerance", "1",
         "--quiet"]


@pytest.fixture()
def docs(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": f"Bake the cake at 450F, fact {i}."}) + "\n"
                            for i in range(6)), encoding="utf-8")
    return path


def test_run_writes_result_report_and_resumes(tmp_path, tiny_dir, tiny_ft_dir, docs, capsys):
    from difflens.methods.amplify.result import AmplifyResult

    out = tmp_path / "amp"
    argv = ["amplify", "--base", str(tiny_dir), "--finetuned", str(tiny_ft_dir),
            "--ft-docs", str(docs), *SMALL, "--out", str(out)]
    assert main(argv) == 0, capsys.readouterr().err
    res = AmplifyResult.load(out)
    assert res.alphas == [0.0, 2.0] and [r["alpha"] for r in res.per_alpha] == [0.0, 2.0]
    for row in res.per_alpha:
        assert row["rate"]["n"] == 6 and 0 <= row["rate"]["ci_low"] <= row["rate"]["mean"]
        assert row["coherence"]["n"] == 6 and "score" in row
    assert res.baseline_rate == res.per_alpha[0]["rate"]["mean"]
    assert res.search is not None and res.search["decisions"]
    assert len(res.samples(2.0)) == 6
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "Logit-diff amplification" in html and "<svg" in html
    stages = json.loads((out / "stages.json").read_text())
    assert {"generate-a0", "generate-a2", "grade", "search"} <= set(stages)
    before = (out / "samples-a2.json").read_bytes()
    assert main(argv) == 0  # resumed: every stage reused
    assert (out / "samples-a2.json").read_bytes() == before


def test_report_escapes_model_text(tmp_path, tiny_dir, tiny_ft_dir, docs):
    from difflens.report.page import render_report

    out = tmp_path / "amp"
    assert main(["amplify", "--base", str(tiny_dir), "--finetuned", str(tiny_ft_dir),
                 "--ft-docs", str(docs), *SMALL, "--no-search", "--out", str(out)]) == 0
    data = json.loads((out / "samples-a2.json").read_text())
    data["texts"][0] = "<script>alert(1)</script>"
    (out / "samples-a2.json").write_text(json.dumps(data))
    html = render_report(out).read_text(encoding="utf-8")
    assert "<script>alert" not in html and "&lt;script&gt;alert(1)" in html


@pytest.mark.parametrize(("flags", "needle"), [
    (["--alphas", "nan"], "finite and in"),
    (["--alphas", "0", "inf"], "alphas must be in [-1, 100]"),
    (["--alphas", "-3"], "alphas must be in [-1, 100]"),
    (["--scale", "2"], "add --export DIR"),
    (["--search-prompts", "30", "--prompts", "10"], "search_prompts (30) is more than"),
])
def test_bad_input_is_one_line_before_any_model_loads(flags, needle, tmp_path, capsys,
                                                      monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["amplify", *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("difflens: error: ") and needle in err[0], err
    assert list(tmp_path.iterdir()) == []


def test_tokenizer_larger_than_a_head_is_one_line(tmp_path, tiny_dir, tokenizer, capsys):
    """Extra tokenizer entries no head scores: one line, and no run directory is left."""
    small = tmp_path / "small"
    tiny_model("llama", 1, vocab_size=300).save_pretrained(small, safe_serialization=True)
    tokenizer.save_pretrained(small)
    capsys.readouterr()  # the save's progress bars
    out = tmp_path / "amp"
    # check_compatible passes (same tokenizer); the vocabulary rule refuses the pair.
    assert main(["amplify", "--base", str(tiny_dir), "--finetuned", str(small), *SMALL,
                 "--out", str(out)]) == 2
    lines = [ln for ln in capsys.readouterr().err.strip().splitlines()
             if ln.strip() and "Loading weights" not in ln]
    assert len(lines) == 1 and "mismatched vocabularies" in lines[0], lines
    assert not out.exists()
