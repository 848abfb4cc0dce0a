"""Per-token KL on tiny random-init pairs: planted truth, streaming = dense, merge, the exact
zero of a model with itself, bad input through the CLI, resume, report and agent view."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from difflens.cli import main
from difflens.methods.kl.aggregate import EDGES, KLStats, TopStore
from difflens.methods.kl.config import KLConfig
from difflens.methods.kl.core import fingerprint_sweep, kl_chunked, kl_sweep
from difflens.methods.kl.runner import run_kl
from difflens.models.arch import architecture
from difflens.models.pair import ModelPair
from difflens.models.vocab import tokenize_padded, valid_positions
from tiny import tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")

PLANTED = [60, 95, 130, 222, 317]
TEXTS = [f"Story {i}: a river runs past engines and gears; she wrote a letter to a friend."
         for i in range(12)]


@pytest.fixture()
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(TEXTS), encoding="utf-8")
    return path


def dense(logits_ft: torch.Tensor, logits_base: torch.Tensor) -> dict[str, torch.Tensor]:
    """The reference: full float64 logits, log_softmax and kl_div."""
    lf = torch.log_softmax(logits_ft.double(), -1)
    lb = torch.log_softmax(logits_base.double(), -1)
    fwd = F.kl_div(lb, lf, log_target=True, reduction="none").sum(-1)
    rev = F.kl_div(lf, lb, log_target=True, reduction="none").sum(-1)
    return {"forward": fwd, "reverse": rev, "symmetric": (fwd + rev) / 2,
            "fingerprint": (lf.exp() * (lf - lb)).sum(0)}


class BiasedHead(torch.nn.Module):
    """A head that is not a plain nn.Linear (as a LoRA-wrapped lm_head is): W h + b."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(weight.clone(), requires_grad=False)
        self.bias = torch.nn.Parameter(bias.clone(), requires_grad=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return F.linear(h, self.weight, self.bias)


def planted_pair(tokenizer, family: str = "llama", bias: float = 4.0, wrapped: bool = False
                 ) -> ModelPair:
    """Base: a tiny model.  Finetune: the same weights, a logit bias on PLANTED in its head."""
    base, ft = tiny_model(family, 0), tiny_model(family, 0)
    weight = ft.get_output_embeddings().weight.detach()
    b = torch.zeros(weight.shape[0])
    b[PLANTED] = bias
    if wrapped:
        head = BiasedHead(weight, b)
    else:
        head = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=True)
        head.weight = torch.nn.Parameter(weight.clone(), requires_grad=False)
        head.bias = torch.nn.Parameter(b, requires_grad=False)
    ft.lm_head = head
    ft.config.tie_word_embeddings = False
    return ModelPair.from_models(base, ft, tokenizer)


# ---- the core against a dense computation ------------------------------------------------------
@pytest.mark.parametrize("family", ["llama", "gemma2", "gpt2"])  # gemma2: final logit softcap
@torch.no_grad()
def test_sweeps_equal_dense_kl_div(family):
    a, b = tiny_model(family, 0), tiny_model(family, 1)
    arch_ft, arch_base = architecture(b), architecture(a)
    gen = torch.Generator().manual_seed(0)
    h_ft, h_base = 3 * torch.randn(29, 32, generator=gen), 3 * torch.randn(29, 32, generator=gen)
    vocab = 390  # a shared vocabulary shorter than the heads: rows past it are left out
    ref = dense(arch_ft.logits(h_ft)[:, :vocab], arch_base.logits(h_base)[:, :vocab])
    kl = kl_sweep(arch_ft, arch_base, h_ft, h_base, vocab, tile=70)  # 6 tiles, a ragged last
    sums = fingerprint_sweep(arch_ft, arch_base, h_ft, h_base, kl.lse_ft, kl.lse_base, vocab,
                             tile=70)
    chunked, chunk_sums = kl_chunked(arch_ft, arch_base, h_ft, h_base, vocab, chunk=4)
    for got in (kl, chunked):
        torch.testing.assert_close(got.forward, ref["forward"], rtol=1e-4, atol=2e-6)
        torch.testing.assert_close(got.reverse, ref["reverse"], rtol=1e-4, atol=2e-6)
        torch.testing.assert_close(got.symmetric, ref["symmetric"], rtol=1e-4, atol=2e-6)
        assert torch.equal(got.top_ft, arch_ft.logits(h_ft)[:, :vocab].argmax(-1))
        assert torch.equal(got.top_base, arch_base.logits(h_base)[:, :vocab].argmax(-1))
    for got in (sums, chunk_sums):
        torch.testing.assert_close(got.contribution, ref["fingerprint"], rtol=1e-4, atol=1e-7)
    # The fingerprint sums to the total forward KL.
    assert math.isclose(float(sums.contribution.sum()), float(ref["forward"].sum()), rel_tol=1e-5)
    same = kl_sweep(arch_ft, arch_ft, h_ft, h_ft, vocab, tile=70)
    assert float(same.forward.abs().max()) == 0.0 and float(same.reverse.abs().max()) == 0.0


# ---- planted truth -----------------------------------------------------------------------------
@pytest.mark.parametrize(("family", "wrapped"), [("llama", False), ("gemma2", False),
                                                 ("qwen2", True)])
def test_planted_bias_is_the_fingerprint_and_the_contexts_match_dense(tmp_path, tokenizer,
                                                                      corpus, family, wrapped):
    pair = planted_pair(tokenizer, family, wrapped=wrapped)
    config = KLConfig(corpus=str(corpus), max_tokens=20, layers=[1, -1], top_contexts=8,
                      batch_size=5)
    summary = run_kl(config, tmp_path / "run", pair=pair, progress=False)
    top = [row["id"] for row in summary["fingerprint"]["top"]]
    assert sorted(top[: len(PLANTED)]) == PLANTED
    assert summary["fingerprint"]["top"][len(PLANTED)]["contribution"] < \
        0.2 * summary["fingerprint"]["top"][len(PLANTED) - 1]["contribution"]
    assert not summary["no_difference"]
    # Activations are identical below the head: the norms are exactly 0 at every layer.
    assert summary["stats"]["norm_1"]["max"] == summary["stats"]["norm_3"]["max"] == 0.0

    # Dense reference: the models' own full logits, every valid position.
    ids, attention = tokenize_padded(tokenizer, TEXTS, 20)
    valid = valid_positions(ids, attention, tokenizer, mask_bos=True)
    with torch.inference_mode():
        logits = {side: model(input_ids=ids, attention_mask=attention.long()).logits[..., :400]
                  for side, model in (("ft", pair.ft_model), ("base", pair.base_model))}
    ref = dense(logits["ft"][valid], logits["base"][valid])
    assert summary["n_positions"] == int(valid.sum())
    stats = summary["stats"]["forward"]
    assert math.isclose(stats["mean"], float(ref["forward"].mean()), rel_tol=1e-4)
    assert math.isclose(stats["max"], float(ref["forward"].max()), rel_tol=1e-4)
    assert math.isclose(stats["quantiles"]["0.9"],
                        float(np.quantile(ref["forward"].numpy(), 0.9)), rel_tol=1e-4)
    assert math.isclose(summary["stats"]["symmetric"]["mean"], float(ref["symmetric"].mean()),
                        rel_tol=1e-4)
    # The highest-KL contexts are those where the bias changes the distribution most.
    rows, cols = valid.nonzero(as_tuple=True)
    dense_kl = torch.full(valid.shape, -1.0, dtype=torch.float64)
    dense_kl[rows, cols] = ref["forward"]
    best = torch.sort(ref["forward"], descending=True).values[:8]
    got = summary["top_contexts"]["forward"]
    # The same positions up to exact ties: their dense KL is the dense top 8.
    torch.testing.assert_close(torch.tensor([float(dense_kl[c["text_index"], c["position"]])
                                             for c in got], dtype=torch.float64), best,
                               rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(torch.tensor([c["score"] for c in got], dtype=torch.float64),
                               best, rtol=1e-4, atol=1e-7)
    expected = [(got[0]["text_index"], got[0]["position"])]
    first = got[0]
    assert first["values"][first["peak"]] == pytest.approx(first["score"], rel=1e-5)
    assert first["ids"][first["peak"]] == int(ids[expected[0]])
    assert first["ft_next"] == tokenizer.decode([int(logits["ft"][expected[0]].argmax())])


def test_model_with_itself_is_exactly_zero_and_says_so(tmp_path, tiny_dir, corpus, capsys):
    code = main(["kl", "--base", str(tiny_dir), "--finetuned", str(tiny_dir), "--corpus",
                 str(corpus), "--max-tokens", "16", "--out", str(tmp_path / "self"), "--quiet"])
    assert code == 0
    out = capsys.readouterr().out
    assert "no difference" in out
    summary = json.loads((tmp_path / "self" / "summary.json").read_text())
    assert summary["no_difference"]
    assert all(row["max"] == 0.0 for row in summary["stats"].values())
    assert "No difference between the models" in (tmp_path / "self" / "report.html").read_text()


# ---- streaming = dense, merge -------------------------------------------------------------------
def synthetic(n: int = 23, t: int = 9, layers=(1, 3), seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    s = 3 + len(layers)
    values = torch.rand(n, t, s, generator=gen) ** 4 * 5  # spread over decades
    values[..., 2] = (values[..., 0] + values[..., 1]) / 2
    valid = torch.rand(n, t, generator=gen) > 0.25
    valid[:, 0] = False  # BOS
    values[~valid] = torch.nan
    ids = torch.randint(3, 300, (n, t), generator=gen)
    tops = torch.randint(3, 300, (2, n, t), generator=gen)
    sums = torch.rand(n, 3, 50, generator=gen, dtype=torch.float64)
    return values, valid, ids, tops, sums


def fill(values, ids, tops, sums, rows, batch, layers=(1, 3)) -> KLStats:
    stats = KLStats(values.shape[1], list(layers), 50, ["forward", "norm_3"], 7, 3, 2)
    for s in range(rows.start, rows.stop, batch):
        e = min(s + batch, rows.stop)
        stats.update(values[s:e], ids[s:e], tops[0, s:e], tops[1, s:e], sums[s:e].sum(0))
    return stats


def test_streaming_statistics_equal_dense_and_halves_merge():
    values, valid, ids, tops, sums = synthetic()
    n = values.shape[0]
    whole = fill(values, ids, tops, sums, slice(0, n), 4)
    summary = whole.summary()
    for i, name in enumerate(whole.names):
        x = values[..., i][valid].double().numpy()
        assert summary[name]["count"] == x.size
        assert summary[name]["mean"] == pytest.approx(x.mean(), rel=1e-12)
        assert summary[name]["std"] == pytest.approx(x.std(), rel=1e-9)
        for q, v in summary[name]["quantiles"].items():
            assert v == pytest.approx(float(np.quantile(x, float(q))), rel=1e-6)
        hist = np.histogram(x, bins=[0.0, *EDGES, math.inf])[0]
        assert whole.histograms()[name] == hist.tolist()
        per = whole.per_position()[name]
        for t in range(values.shape[1]):
            col = values[:, t, i][valid[:, t]].double()
            assert per[t] is None if col.numel() == 0 else per[t] == pytest.approx(
                float(col.mean()), rel=1e-12)
    torch.testing.assert_close(whole.fingerprint, sums.sum(0))
    # The top store equals a dense sort (score desc, then text, position).
    for name, store in whole.stores.items():
        col = values[..., whole.names.index(name)]
        cand = sorted(((-float(col[r, c]), r, c) for r, c in valid.nonzero().tolist()))[:7]
        assert [(int(a), int(b)) for a, b in zip(store.text, store.pos, strict=True)] == \
            [(r, c) for _, r, c in cand]
        r, c = cand[0][1], cand[0][2]
        start = max(0, c - 3)
        assert store.ids[0, : min(values.shape[1], c + 3) - start].tolist() == \
            ids[r, start: c + 3].tolist()
    # Two halves merged equal the whole (any batch size).
    merged = fill(values, ids, tops, sums, slice(0, 10), 3).merge(
        fill(values, ids, tops, sums, slice(10, n), 5))
    whole_t, _ = whole.to_tensors()
    merged_t, _ = merged.to_tensors()
    for key in whole_t:
        torch.testing.assert_close(merged_t[key], whole_t[key], equal_nan=True, msg=key)


def test_top_store_merge_keeps_the_best_and_breaks_ties_by_position():
    a, b = TopStore(3, 1, 1), TopStore(3, 1, 1)
    zeros = torch.zeros(2, 4)
    a.update(zeros, torch.arange(8).reshape(2, 4), 0)
    b.update(zeros + torch.tensor([[0, 0, 0.5, 0], [0, 0, 0, 0]]), torch.arange(8).reshape(2, 4),
             2)
    a.merge(b)
    assert list(zip(a.text.tolist(), a.pos.tolist(), strict=True)) == [(2, 2), (0, 0), (0, 1)]
    assert a.ids.tolist() == [[1, 2, 3], [0, 1, 2], [0, 1, 2]]  # windows clipped at the start
    assert a.start.tolist() == [1, 0, 0]


def test_pass_is_the_same_at_any_batch_size(tmp_path, tiny_dir, tiny_ft_dir, corpus):
    pair = ModelPair.load(tiny_dir, tiny_ft_dir)
    runs = [run_kl(KLConfig(corpus=str(corpus), max_tokens=16, layers=[2], batch_size=size,
                            top_contexts=5), tmp_path / f"b{size}", pair=pair, progress=False)
            for size in (1, 12)]
    for name in runs[0]["stats"]:
        assert runs[0]["stats"][name]["mean"] == pytest.approx(runs[1]["stats"][name]["mean"],
                                                               rel=1e-5)
    assert [c["position"] for c in runs[0]["top_contexts"]["forward"]] == \
        [c["position"] for c in runs[1]["top_contexts"]["forward"]]
    assert [r["id"] for r in runs[0]["fingerprint"]["top"][:10]] == \
        [r["id"] for r in runs[1]["fingerprint"]["top"][:10]]
    # --no-fingerprint: the same statistics from the single sweep, no fingerprint.
    single = run_kl(KLConfig(corpus=str(corpus), max_tokens=16, layers=[2], batch_size=12,
                             top_contexts=5, fingerprint=False), tmp_path / "single",
                    pair=pair, progress=False)
    assert single["fingerprint"] is None
    assert single["stats"] == runs[1]["stats"]
    assert single["top_contexts"] == runs[1]["top_contexts"]


# ---- bad input through the CLI ----------------------------------------------------------------
def one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.strip().splitlines()
             if "Loading weights" not in line and line.strip()]
    assert len(lines) == 1 and lines[0].startswith("difflens: error: "), err
    return lines[0]


def test_cli_bad_input_is_one_line_exit_2(tmp_path, tiny_dir, tiny_ft_dir, corpus, capsys):
    common = ["kl", "--base", str(tiny_dir), "--finetuned", str(tiny_ft_dir), "--corpus",
              str(corpus), "--quiet"]
    cases = [
        (["--layers", "9"], "layer 9 is out of range"),
        (["--layers", "1.5"], "outside [0, 1]"),
        (["--max-tokens", "1"], "no valid positions"),
        (["--top-contexts", "0"], "top_contexts must be in [1, 10000]"),
        (["--top-contexts", "20000"], "top_contexts must be in [1, 10000]"),
        (["--divergence", "sideways"], "invalid choice"),
    ]
    for i, (extra, needle) in enumerate(cases):
        out = tmp_path / f"run{i}"
        assert main([*common, *extra, "--out", str(out)]) == 2, extra
        assert needle in one_line(capsys), extra
        assert not out.exists(), "nothing may be written for a refused input"


def test_vocabularies_that_differ(tmp_path, tiny_dir, corpus, tokenizer, capsys):
    """A head with extra (padding) rows: compared over the shared ids, with a note.  A head
    smaller than the tokenizer: one line."""
    big = tiny_model("llama", 1, vocab_size=448)
    big.save_pretrained(tmp_path / "big", safe_serialization=True)
    tokenizer.save_pretrained(tmp_path / "big")
    assert main(["kl", "--base", str(tiny_dir), "--finetuned", str(tmp_path / "big"),
                 "--corpus", str(corpus), "--max-tokens", "12", "--layers", "-1", "--out",
                 str(tmp_path / "big-run"), "--quiet"]) == 0
    assert "compared over the 400 shared token ids" in capsys.readouterr().out
    summary = json.loads((tmp_path / "big-run" / "summary.json").read_text())
    assert summary["vocab"] == 400 and "400 shared" in summary["vocab_note"]
    assert max(r["id"] for r in summary["fingerprint"]["top"]) < 400
    small = tiny_model("llama", 1, vocab_size=300)  # the tokenizer's ids reach 400
    small.save_pretrained(tmp_path / "small", safe_serialization=True)
    tokenizer.save_pretrained(tmp_path / "small")
    capsys.readouterr()
    assert main(["kl", "--base", str(tiny_dir), "--finetuned", str(tmp_path / "small"),
                 "--corpus", str(corpus), "--out", str(tmp_path / "small-run"), "--quiet"]) == 2
    assert "mismatched vocabularies" in one_line(capsys)


# ---- resume, chat corpora, report, agent --------------------------------------------------------
def test_resume_reuses_finished_stages(tmp_path, tiny_dir, tiny_ft_dir, corpus, monkeypatch):
    import difflens.collect as collect
    import difflens.methods.kl.runner as runner

    pair = ModelPair.load(tiny_dir, tiny_ft_dir)
    config = KLConfig(corpus=str(corpus), max_tokens=16, top_contexts=4)
    real_pass = runner.kl_pass

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "kl_pass", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_kl(config, tmp_path / "run", pair=pair, progress=False)
    stages = json.loads((tmp_path / "run" / "stages.json").read_text())
    assert list(stages) == ["layer"]
    monkeypatch.setattr(collect, "choose_readout_layer", interrupted)  # must not run again
    monkeypatch.setattr(runner, "kl_pass", real_pass)
    first = run_kl(config, tmp_path / "run", pair=pair, progress=False)
    monkeypatch.setattr(runner, "kl_pass", interrupted)  # the pass is finished too now
    second = run_kl(config, tmp_path / "run", pair=pair, progress=False)
    first.pop("seconds"), second.pop("seconds")
    assert first == second
    assert first["readout_layer"] in first["layers"] and 3 in first["layers"]


def test_chat_corpus_and_special_positions(tmp_path, tiny_dir, tiny_ft_dir, tokenizer):
    chat = tmp_path / "chat.jsonl"
    chat.write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": f"Boats {i}.</s> More?"},
        {"role": "assistant", "content": "Boats float on the river.</s>"}]}) + "\n"
        for i in range(6)), encoding="utf-8")
    pair = ModelPair.load(tiny_dir, tiny_ft_dir)
    runs = {mask: run_kl(KLConfig(corpus=str(chat), max_tokens=40, layers=[-1],
                                  mask_special=mask), tmp_path / str(mask), pair=pair,
                         progress=False) for mask in (False, True)}
    eos = tokenizer.eos_token_id
    from difflens.data.corpus import load_texts

    ids, attention = tokenize_padded(tokenizer, load_texts(chat, tokenizer=tokenizer), 40)
    n_eos = int(((ids == eos) & attention).sum())
    assert n_eos > 0
    assert runs[False]["n_positions"] - runs[True]["n_positions"] == n_eos


def test_report_escapes_model_text_and_draws_heat(tmp_path, tiny_dir, tiny_ft_dir, corpus):
    from difflens.report.page import render_report

    pair = ModelPair.load(tiny_dir, tiny_ft_dir)
    run_kl(KLConfig(corpus=str(corpus), max_tokens=16, layers=[-1], top_contexts=3),
           tmp_path / "run", pair=pair, progress=False)
    path = tmp_path / "run" / "summary.json"
    summary = json.loads(path.read_text())
    summary["top_contexts"]["forward"][0]["tokens"][0] = "<script>alert(1)</script>"
    summary["fingerprint"]["top"][0]["token"] = "<b>&amp;"
    path.write_text(json.dumps(summary))
    html = render_report(tmp_path / "run").read_text()
    assert "<script>alert" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;b&gt;&amp;amp;" in html
    assert "rgba(214,48,49," in html and "outline:2px" in html  # heat and the peak
    assert html.count("<svg") >= 2  # histograms and the per-position line


def test_agent_view_and_api(tmp_path, tiny_dir, tiny_ft_dir, corpus):
    import difflens
    from difflens.agent.kl_results import kl_results

    summary = difflens.kl(out=str(tmp_path / "run"), base=str(tiny_dir),
                          finetuned=str(tiny_ft_dir), corpus=str(corpus), max_tokens=16,
                          layers=[2, 3], progress=False)
    assert (tmp_path / "run" / "report.html").exists() and summary["report"]
    results = kl_results(tmp_path / "run")
    top = summary["fingerprint"]["top"][0]["token"]
    assert json.dumps(top, ensure_ascii=False) in results.overview
    assert "⟦" in results.overview and "⟧" in results.overview
    for secret in (str(tiny_dir), str(tiny_ft_dir), str(tmp_path)):
        assert secret not in results.overview
        assert all(secret not in text for text in results.sections.values())
    assert {"fingerprint", "contexts", "norm_layer_2", "norm_layer_3"} <= set(results.sections)
    assert "layer 3" in results.detail("norm_layer_3")
