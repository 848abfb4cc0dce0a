"""Diff Mining: streaming counts, lenses, runner, CLI, bad input, report (tiny models only)."""

from __future__ import annotations

import json

import pytest
import torch

from difflens.cli import main
from difflens.errors import DifflensError
from difflens.methods.mining.aggregate import MiningCounts
from difflens.methods.mining.config import MiningConfig
from difflens.methods.mining.extract import (
    batch_delta,
    shared_vocab,
    tokenize_padded,
    valid_positions,
)
from difflens.methods.mining.runner import run_mining
from difflens.models.pair import ModelPair
from tiny import FAMILIES, tiny_model

TEXTS = [f"Text {i} is about rivers, engines and a letter to a friend in the old town."
         for i in range(24)] + ["Short one.", "The quick brown fox jumps."]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture()
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(TEXTS), encoding="utf-8")
    return path


def naive_counts(delta: torch.Tensor, valid: torch.Tensor, k: int) -> dict[str, torch.Tensor]:
    """The definition, computed densely on all rows at once."""
    d = delta[valid]
    v = d.shape[1]
    top_val, top_idx = d.topk(k, dim=1)
    low_val, low_idx = (-d).topk(k, dim=1)
    return {
        "count_pos": torch.bincount(top_idx[top_val > 0], minlength=v),
        "count_neg": torch.bincount(low_idx[low_val > 0], minlength=v),
        "sum_delta": d.double().sum(0),
        "n_positive": (d > 0).sum(0),
        "n_negative": (d < 0).sum(0),
    }


def stream(delta, valid, k, start, stop, batch=37, sample_size=64):
    acc = MiningCounts(delta.shape[1], k, sample_size)
    for s in range(start, stop, batch):
        e = min(s + batch, stop)
        acc.update(delta[s:e].clone(), valid[s:e], torch.arange(s, e))
    return acc


def test_streaming_counts_equal_naive_and_merge():
    gen = torch.Generator().manual_seed(0)
    delta = torch.randn(300, 50, generator=gen)
    delta[:, 7] += 2.0  # one clearly promoted token
    valid = torch.rand(300, generator=gen) > 0.2
    whole = stream(delta, valid, 5, 0, 300).finalize()
    naive = naive_counts(delta, valid, 5)
    for name, expected in naive.items():
        got = getattr(whole, name)
        if name == "sum_delta":
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-4)
        else:
            assert torch.equal(got, expected), name
    assert whole.n_positions == int(valid.sum())
    assert int(whole.count_pos.argmax()) == 7
    merged = stream(delta, valid, 5, 0, 131).merge(stream(delta, valid, 5, 131, 300)).finalize()
    for name in ("count_pos", "count_neg", "n_positive", "n_negative", "sample_ids",
                 "sample_idx", "sample_val"):
        assert torch.equal(getattr(merged, name), getattr(whole, name)), name
    torch.testing.assert_close(merged.sum_delta, whole.sum_delta, rtol=1e-5, atol=1e-4)
    assert whole.sample_ids.shape[0] == 64 and merged.n_positions == whole.n_positions
    # The sample holds exactly the valid rows' top-K entries.
    rows = whole.sample_ids
    assert bool(valid[rows].all())
    torch.testing.assert_close(whole.sample_val, delta[rows].topk(5, dim=1).values)


@pytest.mark.parametrize("family", FAMILIES)
def test_raw_lens_equals_model_logits(family, tokenizer):
    """Δ from the last layer's output through final norm + head = difference of model logits."""
    base, ft = tiny_model(family, 0), tiny_model(family, 1)
    pair = ModelPair.from_models(base, ft, tokenizer)
    ids, attention = tokenize_padded(tokenizer, TEXTS[-3:], 12)
    assert not bool(attention.all()), "the batch must contain padding"
    vocab = shared_vocab(pair)
    delta = batch_delta(pair, ids, attention, pair.num_layers - 1, vocab)
    with torch.inference_mode():
        mask = attention.long()
        expected = (ft(input_ids=ids, attention_mask=mask).logits
                    - base(input_ids=ids, attention_mask=mask).logits)[..., :vocab]
    torch.testing.assert_close(delta[attention], expected[attention], rtol=1e-4, atol=1e-4)


def test_shared_head_adapter_pair_and_logit_lens(tmp_path, tiny_dir, tokenizer):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    peft = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "down_proj"]))
    torch.manual_seed(0)
    for name, p in peft.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.5)
    peft.eval()
    pair = ModelPair.from_models(peft, peft, tokenizer)
    from difflens.methods.mining.extract import shares_head

    assert pair.adapter and shares_head(pair.arch("base"), pair.arch("ft"))
    ids, attention = tokenize_padded(tokenizer, TEXTS[:4], 10)
    delta = batch_delta(pair, ids, attention, 3, shared_vocab(pair))
    with torch.inference_mode():
        ft_logits = peft(input_ids=ids).logits
        with peft.disable_adapter():
            base_logits = peft(input_ids=ids).logits
        # logit lens at layer 1 = unembed(final_norm(output of layer 1)), per side
        lens = batch_delta(pair, ids, attention, 1, shared_vocab(pair))
        arch = pair.arch("ft")
        hs_ft = peft(input_ids=ids, output_hidden_states=True).hidden_states[2]
        with peft.disable_adapter():
            hs_base = peft(input_ids=ids, output_hidden_states=True).hidden_states[2]
        expected_lens = arch.logits(hs_ft) - arch.logits(hs_base)
    torch.testing.assert_close(delta, ft_logits - base_logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(lens, expected_lens, rtol=1e-4, atol=1e-4)


def test_model_paired_with_itself_promotes_nothing(tmp_path, tiny_dir, corpus, capsys):
    pair = ModelPair.load(base=tiny_dir, finetuned=tiny_dir)
    summary = run_mining(MiningConfig(corpus=str(corpus), top_k=10, max_tokens=16),
                         tmp_path / "run", pair=pair, progress=False)
    assert summary["no_difference"] and summary["max_abs_delta"] == 0.0
    assert summary["promoted"] == [] and summary["suppressed"] == []
    assert "skipped" in summary["topics"]
    from difflens.methods.mining.result import CorpusCounts

    counts = CorpusCounts.load(tmp_path / "run").counts
    assert int(counts.count_pos.sum()) == 0 and int(counts.n_positive.sum()) == 0
    from difflens.methods.mining.summary import print_summary

    print_summary(summary)
    assert "no difference between the models" in capsys.readouterr().out


def test_logit_lens_option_reads_the_chosen_layer(tmp_path, tiny_dir, tiny_ft_dir, corpus):
    pair = ModelPair.load(base=tiny_dir, finetuned=tiny_ft_dir)
    common = dict(corpus=str(corpus), top_k=10, max_tokens=12, topics=0)
    lens = run_mining(MiningConfig(lens="logit-lens", layer=0.5, **common), tmp_path / "lens",
                      pair=pair, progress=False)
    raw = run_mining(MiningConfig(**common), tmp_path / "raw", pair=pair, progress=False)
    assert lens["layer"] == 2 and raw["layer"] == 3  # 4 layers: depth 0.5 -> 2; raw = last
    assert lens["promoted"] != raw["promoted"]
    with pytest.raises(DifflensError, match="out of range"):
        run_mining(MiningConfig(lens="logit-lens", layer=7, **common), tmp_path / "bad",
                   pair=pair, progress=False)
    assert not (tmp_path / "bad").exists()


def test_bad_input_in_the_core(tokenizer):
    with pytest.raises(DifflensError, match="larger than the vocabulary"):
        MiningCounts(vocab=50, top_k=51)
    acc = MiningCounts(vocab=50, top_k=5)
    acc.update(torch.randn(4, 50), torch.zeros(4, dtype=torch.bool))
    with pytest.raises(DifflensError, match="no valid positions") as err:
        acc.finalize()
    assert "\n" not in str(err.value)
    ids, attention = tokenize_padded(tokenizer, ["hello"], 1)
    assert not valid_positions(ids, attention, tokenizer, mask_bos=True).any()
    small = tiny_model("llama", 1, vocab_size=300)  # the tokenizer's ids reach ~400
    with pytest.raises(DifflensError, match="mismatched vocabularies"):
        shared_vocab(ModelPair.from_models(tiny_model("llama", 0), small, tokenizer))


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main(["mine", "--quiet", *map(str, argv)])
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    return code, err[-1] if err else "", captured.out


@pytest.fixture(autouse=True)
def _mine_registered(monkeypatch):
    """Register ``difflens mine`` unless commands.py already does (it will, once wired)."""
    import difflens.commands as commands
    from difflens.methods.mining.cli import add_parser

    original = commands.register_all

    def register_all(sub):
        original(sub)
        if "mine" not in sub.choices:
            add_parser(sub)

    monkeypatch.setattr(commands, "register_all", register_all)


def test_cli_bad_input_one_line_exit_2(capsys, tmp_path, tiny_dir, tiny_ft_dir, corpus):
    common = ["--base", tiny_dir, "--finetuned", tiny_ft_dir, "--corpus", corpus]
    code, line, _ = run_cli(capsys, *common, "--top-k", 100000, "--out", tmp_path / "a")
    assert code == 2 and line.startswith("difflens: error: top-k 100000 is larger than"), line
    assert not (tmp_path / "a").exists(), "nothing may be written for a rejected K"
    code, line, _ = run_cli(capsys, *common, "--max-tokens", 1, "--mask-bos",
                            "--out", tmp_path / "b")
    assert code == 2 and line.startswith("difflens: error: no valid positions"), line
    code, line, _ = run_cli(capsys, *common, "--top-k", 0, "--out", tmp_path / "c")
    assert code == 2 and "top_k must be a positive integer" in line, line


def test_cli_mismatched_tokenizers(capsys, tmp_path, tiny_dir, corpus):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from tiny import save_tiny

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel()
    tok.train_from_iterator(["completely other words here"] * 5,
                            trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>"]))
    other = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>")
    ft = save_tiny(tmp_path / "other-vocab", "llama", 1, other)
    code, line, _ = run_cli(capsys, "--base", tiny_dir, "--finetuned", ft, "--corpus", corpus)
    assert code == 2 and line.startswith("difflens: error:") and "different tokenizers" in line


def test_cli_runs_resumes_and_reports(capsys, tmp_path, tiny_dir, tiny_ft_dir, corpus):
    args = ["--base", tiny_dir, "--finetuned", tiny_ft_dir, "--corpus", corpus, "--top-k", 20,
            "--max-tokens", 16, "--topics", 2, "--normalize", "--out", tmp_path / "run"]
    code, line, out = run_cli(capsys, *args)
    assert code == 0, line
    assert "promoted (Top-K occurrence rate" in out and "NMF topics" in out
    run = tmp_path / "run"
    for name in ("counts.safetensors", "orderings.json", "nmf.json", "examples.json",
                 "summary.json"):
        assert (run / name).exists(), name
    stamp = (run / "counts.safetensors").stat().st_mtime_ns
    code, _, out2 = run_cli(capsys, *args)
    assert code == 0 and (run / "counts.safetensors").stat().st_mtime_ns == stamp
    assert out2 == out, "a resumed run reports the same result"
    from difflens.methods.mining.result import MiningResult

    result = MiningResult.load(run)
    assert result.n_texts == len(TEXTS) and len(result.top_tokens(5)) == 5
    rows = result.orderings()["promoted"]["topk_occurrence"]
    assert all("variants" in r for r in rows)
    keys = [r["token"] for r in rows]
    assert len(keys) == len(set(keys)) and all(k == k.strip().lower() for k in keys)
    assert len(result.topics["topics"]) == 2
    from difflens.methods.mining.report import render_section

    html = render_section(run)
    assert html.startswith('<section class="dl-mining">') and "Promoted tokens" in html


def test_report_escapes_model_text(tmp_path):
    from difflens.methods.mining.report import render_section
    from difflens.methods.mining.result import MiningResult

    evil = "<script>alert(1)</script>"
    row = {"token": evil, "ids": [5], "rate": 50.0, "count": 3, "frac": 0.9, "avg_diff": 1.0}
    topics = {"n_topics": 1, "n_positions": 4, "n_tokens": 2, "values": "relu",
              "relative_error": 0.1, "topics": [{"topic": 0, "tokens": [evil, "&"],
                                                  "weights": [1.0, 0.5], "prevalence": 1.0,
                                                  "dominant_share": 1.0, "concentration": 1.0}],
              "cosine": [[1.0]]}
    examples = [{"token": evil, "examples": [{"context": "a <b>bold</b> & x", "promoted": evil,
                                              "next": None, "delta": 2.0, "text_index": 0,
                                              "position": 3}]}]
    MiningResult(str(tmp_path), "<base>", "<ft>", "raw", 3, 1, 4, 10, 2, False, 2.0, [row],
                 [row], topics, examples,
                 {"tokens": [evil], "relevant": [True], "fraction": 1.0,
                  "description": "d"}).save(tmp_path)
    html = render_section(tmp_path)
    assert "<script>" not in html and "<b>" not in html and "<base>" not in html
    assert "&lt;script&gt;" in html and "&amp;" in html


def test_relevance_glue_with_a_stand_in_grader(tmp_path, tiny_dir, tiny_ft_dir, corpus):
    from difflens.methods.mining.relevance import relevance

    class StandIn:
        def __init__(self):
            self.calls = []

        def token_relevance(self, tokens, description):
            self.calls.append((tokens, description))
            return [t.startswith("r") for t in tokens]

    grader = StandIn()
    rel = relevance(["river", "engine", "road", "x"], "rivers and roads", grader)
    assert rel.relevant == [True, False, True, False] and rel.fraction == 0.5
    assert grader.calls == [(["river", "engine", "road", "x"], "rivers and roads")]
    assert relevance([], "d", grader).fraction == 0.0
    pair = ModelPair.load(base=tiny_dir, finetuned=tiny_ft_dir)
    summary = run_mining(MiningConfig(corpus=str(corpus), top_k=10, max_tokens=12, topics=0),
                         tmp_path / "run", pair=pair, progress=False, grader=StandIn(),
                         description="rivers")
    assert summary["topics"] is None
    assert len(summary["relevance"]["relevant"]) == 20 and len(summary["promoted"]) > 20
    assert json.loads((tmp_path / "run" / "relevance.json").read_text())["description"] == "rivers"


def test_normalization_merges_variants(tokenizer):
    from difflens.methods.mining.normalize import group_variants, normalize_key

    vocab = tokenizer.get_vocab()
    ids = [vocab[t] for t in ("the", "Ġthe", "The", ".", "Ġ,") if t in vocab]
    ids.append(tokenizer.bos_token_id)
    groups = group_variants(tokenizer, ids, {tokenizer.bos_token_id})
    assert [g[0] for g in groups] == ["the"]
    assert len(groups[0][1]) >= 2
    assert normalize_key(" Cake\n") == "cake" and normalize_key("...") is None
    assert normalize_key("\ufffd") is None


def test_mine_api_accepts_config_or_fields(tmp_path, tiny_dir, tiny_ft_dir, corpus):
    from difflens.methods.mining import MiningConfig as Exported
    from difflens.methods.mining import mine

    pair = ModelPair.load(base=tiny_dir, finetuned=tiny_ft_dir)
    a = mine(corpus=str(corpus), top_k=10, max_tokens=8, topics=0, out=str(tmp_path / "a"),
             pair=pair, progress=False)
    b = mine(Exported(corpus=str(corpus), top_k=10, max_tokens=8), topics=0,
             out=str(tmp_path / "b"), pair=pair, progress=False)
    assert a["promoted"] == b["promoted"] and a["n_positions"] == b["n_positions"]


def test_cli_grades_relevance_when_a_description_is_known(capsys, monkeypatch, tmp_path,
                                                          tiny_dir, tiny_ft_dir, corpus):
    import difflens.methods.mining.cli as mining_cli

    class StandIn:
        def token_relevance(self, tokens, description):
            return [True] * (len(tokens) // 2) + [False] * (len(tokens) - len(tokens) // 2)

    monkeypatch.setattr(mining_cli, "make_grader", lambda args: StandIn())
    common = ["--base", tiny_dir, "--finetuned", tiny_ft_dir, "--corpus", corpus, "--top-k", 10,
              "--max-tokens", 8, "--topics", 0]
    code, line, out = run_cli(capsys, *common, "--out", tmp_path / "a")
    assert code == 0 and not (tmp_path / "a" / "relevance.json").exists(), line  # no card
    code, line, out = run_cli(capsys, *common, "--description", "rivers", "--out", tmp_path / "b")
    assert code == 0, line
    assert json.loads((tmp_path / "b" / "relevance.json").read_text())["fraction"] == 0.5
    assert "token relevance: 50% of the top 20" in out


def test_result_reads_older_summaries_and_fails_in_one_line(tmp_path):
    """Readers (agent, evaluation, report) go through MiningResult.load: a summary written by
    hand or by an older difflens reads with defaults; an unfinished or corrupt run is one line."""
    from difflens.methods.mining.result import MiningResult

    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(DifflensError, match="not a finished Diff Mining run") as info:
        MiningResult.load(run)
    assert str(run) in str(info.value) and "re-run" in str(info.value)
    (run / "summary.json").write_text(json.dumps({"promoted": [{"token": " cake"}],
                                                  "unknown_newer_key": 1}), encoding="utf-8")
    result = MiningResult.load(run)
    assert result.top_tokens() == [" cake"] and result.suppressed == [] and result.topics is None
    assert result.run_dir == str(run)
    for text in ("{broken", "[]", '{"suppressed": []}'):
        (run / "summary.json").write_text(text, encoding="utf-8")
        with pytest.raises(DifflensError, match="re-run") as info:
            MiningResult.load(run)
        assert "\n" not in str(info.value) and str(run) in str(info.value)
