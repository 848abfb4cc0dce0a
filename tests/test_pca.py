"""PCA of activation differences on tiny random-init models (nothing downloaded).

Planted truth: the finetuned copy gets a rank-1 direction u (built from the unembedding rows of
two chosen tokens) added to one layer's output with a magnitude that varies per position and
text, on top of small weight noise everywhere.  PC1 of δ at that layer must be u, and its logit
lens on the right sign must name the chosen tokens.
"""

from __future__ import annotations

import json

import pytest
import torch

from difflens.cli import main
from difflens.errors import DifflensError
from difflens.methods.pca import runner as pca_runner
from difflens.methods.pca.config import PCAConfig
from difflens.methods.pca.contexts import TopContexts
from difflens.methods.pca.core import fit, orient
from difflens.methods.pca.result import PCAResult
from difflens.methods.pca.runner import run_pca
from difflens.models.pair import ModelPair
from difflens.stats.covariance import Covariance
from tiny import tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")

TEXTS = [f"Story {i}: the quick brown fox jumps over the lazy dog near the old town river."
         for i in range(24)]
PLANT_LAYER = 2
PLANTED = ("Ġfox", "Ġriver")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("pca-corpus") / "corpus.txt"
    path.write_text("\n".join(TEXTS), encoding="utf-8")
    return path


def planted_pair(tokenizer, family: str, scale: float = 0.5, noise: float = 1e-3):
    """(pair, u, token ids): the finetune = base + weight noise + a(b,t)·u at PLANT_LAYER."""
    base, ft = tiny_model(family, 0), tiny_model(family, 0)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in ft.parameters():
            p.add_(noise * torch.randn(p.shape, generator=gen))
    pair = ModelPair.from_models(base, ft, tokenizer)
    ids = [tokenizer.get_vocab()[t] for t in PLANTED]
    rows = pair.arch("ft").unembed.weight[ids].detach()
    u = rows.sum(0)
    u = u / u.norm()

    def hook(_module, _inputs, output):
        hidden = output[0] if isinstance(output, tuple) else output
        # Magnitude in [0, 2]·scale·‖h‖, varying with the position's own activation, so it
        # carries variance (in units of the activation norm, which differs per family).
        norm = hidden.norm(dim=-1)
        z = hidden[..., 0] / norm * hidden.shape[-1] ** 0.5  # ~unit spread in every family
        a = scale * norm * (1.0 + torch.sin(3.0 * z))
        hidden = hidden + a[..., None] * u.to(hidden.dtype)
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    pair.arch("ft").layers[PLANT_LAYER].register_forward_hook(hook)
    return pair, u, ids


# ---- streaming statistics ----------------------------------------------------------------------
def test_streaming_covariance_equals_dense_and_merges():
    gen = torch.Generator().manual_seed(0)
    rows = torch.randn(500, 12, generator=gen) @ torch.randn(12, 12, generator=gen) + 3.0
    whole = Covariance(12)
    for chunk in rows.split(37):
        whole.update(chunk)
    dense = torch.cov(rows.double().T)
    assert torch.allclose(whole.covariance(), dense, atol=1e-10)
    assert torch.allclose(whole.mean, rows.double().mean(0), atol=1e-12)
    halves = Covariance(12).update(rows[:200]).merge(Covariance(12).update(rows[200:]))
    assert halves.count == 500
    assert torch.allclose(halves.covariance(), whole.covariance(), atol=1e-10)
    back = Covariance.from_tensors(*whole.to_tensors("x."), prefix="x.")
    assert torch.equal(back.outer, whole.outer) and back.count == 500
    # The eigendecomposition matches the dense one (up to sign).
    fitted = fit(whole, 3)
    values, vectors = torch.linalg.eigh(dense)
    assert torch.allclose(fitted.eigenvalues, values.flip(0)[:3], rtol=1e-8)
    top = vectors[:, -1].float()
    assert abs(float(fitted.components[0] @ top)) > 1 - 1e-5


def test_sign_rule_points_along_the_mean():
    comps = torch.eye(3)[:2] * torch.tensor([[-1.0], [1.0]])
    oriented, signs = orient(comps, torch.tensor([2.0, -1.0, 0.0]).double())
    assert signs.tolist() == [-1.0, -1.0]
    assert oriented[0].tolist() == [1.0, 0.0, 0.0] and oriented[1].tolist() == [0.0, -1.0, 0.0]
    _, signs = orient(torch.tensor([[0.0, -3.0, 1.0]]), torch.zeros(3).double())
    assert signs.tolist() == [-1.0]  # no mean: the largest entry is made positive


def test_top_contexts_equal_dense_and_merge():
    gen = torch.Generator().manual_seed(0)
    b, t, c = 6, 10, 3
    proj = torch.randn(b, t, c, generator=gen)
    ids = torch.randint(3, 50, (b, t), generator=gen)
    attention = torch.ones(b, t, dtype=torch.bool)
    attention[4, 7:] = False
    valid = attention.clone()
    valid[:, 0] = False
    whole = TopContexts.empty(c, 4, 2, 2).update(proj, valid, ids, attention, 0)
    # Dense truth: the 4 largest ±projections over valid positions.
    for comp in range(c):
        for s, sign in enumerate((1.0, -1.0)):
            vals = (sign * proj[..., comp]).masked_fill(~valid, float("-inf")).flatten()
            assert torch.allclose(whole.values[comp, s], vals.topk(4).values)
    top = whole.values[0, 0, 0]
    bb, tt = int(whole.text[0, 0, 0]), int(whole.pos[0, 0, 0])
    assert float(proj[bb, tt, 0]) == float(top)
    window = ids[bb, max(0, tt - 2): tt + 3].tolist()
    assert [i for i in whole.tokens[0, 0, 0].tolist() if i >= 0] == window
    # Two halves (shards) merged equal the whole.
    first = TopContexts.empty(c, 4, 2, 2).update(proj[:3], valid[:3], ids[:3], attention[:3], 0)
    second = TopContexts.empty(c, 4, 2, 2).update(proj[3:], valid[3:], ids[3:], attention[3:], 3)
    merged = second.merge(first)
    for name in ("values", "text", "pos", "tokens"):
        assert torch.equal(getattr(merged, name), getattr(whole, name)), name
    assert torch.equal(merged.heat.nan_to_num(9.0), whole.heat.nan_to_num(9.0))


# ---- planted truth -----------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["llama", "gemma3", "gpt2"])
def test_planted_direction_is_pc1_and_reads_its_tokens(family, tokenizer, corpus, tmp_path):
    pair, u, ids = planted_pair(tokenizer, family)
    summary = run_pca(PCAConfig(corpus=str(corpus), layers=[PLANT_LAYER], max_tokens=24,
                                components=4, readout=2, contexts=3,
                                skip=["patchscope", "steering"]),
                      tmp_path / "run", pair=pair, progress=False)
    result = PCAResult.load(summary["run_dir"])
    pc1 = result.components(PLANT_LAYER)[0]
    cos = float(pc1 @ u)
    assert cos >= 0.99, cos  # right sign too: the planted magnitude is positive on average
    info = result.pca[PLANT_LAYER]
    assert info["explained"][0] > 0.8, info["explained"]  # it dominates the variance
    read = result.readouts[PLANT_LAYER][0]
    planted = {tokenizer.decode([i]) for i in ids}
    assert planted <= set(read["positive"]["tokens"][:5]), read["positive"]["tokens"][:5]
    assert not planted & set(read["negative"]["tokens"][:5])
    # The top contexts of +PC1 are real positions of the corpus, with their heat.
    contexts = result.contexts()[PLANT_LAYER][0]["positive"]
    assert len(contexts) == 3 and contexts[0]["value"] >= contexts[-1]["value"]
    assert contexts[0]["heat"][contexts[0]["center"]] == pytest.approx(contexts[0]["value"],
                                                                       rel=1e-3)


def test_model_paired_with_itself_has_no_difference(tokenizer, corpus, tmp_path):
    model = tiny_model("llama", 0)
    pair = ModelPair.from_models(model, model, tokenizer)
    summary = run_pca(PCAConfig(corpus=str(corpus), max_tokens=16, components=3, readout=2),
                      tmp_path / "self", pair=pair, progress=False)
    assert summary["no_difference"]
    assert "No difference" in summary["notes"][0]
    stats = PCAResult.load(summary["run_dir"]).stats()
    layer = summary["layers"][0]
    assert float(stats.cov[layer].covariance().abs().max()) == 0.0
    assert not (tmp_path / "self" / "readout.json").exists()


# ---- the whole run: Patchscope, steering, resume, report, agent ----------------------------------
def test_full_run_resumes_and_reports(tokenizer, corpus, tmp_path, monkeypatch):
    import difflens
    from difflens.agent.pca_results import pca_results

    pair, _, _ = planted_pair(tokenizer, "llama")
    config = dict(corpus=str(corpus), layers=[PLANT_LAYER], max_tokens=16, components=3,
                  readout=2, contexts=2, final_prompts=4)
    summary = difflens.pca(out=str(tmp_path / "run"), pair=pair, progress=False, **config)
    run = tmp_path / "run"
    stages = json.loads((run / "stages.json").read_text())
    for stage in ("layer", "covariance", "pca", "norms", "readout", "patchscope", "contexts",
                  "steering"):
        assert stage in stages, stage
    steer = summary["steering"][0]
    assert steer["component"] == 0 and steer["layer"] == PLANT_LAYER
    assert steer["found"] is not None and len(steer["unsteered"]) == 4
    patch = summary["patchscope"][str(PLANT_LAYER)][0]
    assert patch["positive"]["scale"] > 0 and patch["negative"]["tokens"]
    html = (run / "report.html").read_text(encoding="utf-8")
    assert "PCA of activation differences" in html and "<svg" in html
    assert "Top-activating contexts" in html
    # Model text is escaped: a context token that is markup shows as text.
    contexts = json.loads((run / "contexts.json").read_text(encoding="utf-8"))
    contexts[str(PLANT_LAYER)][0]["positive"][0]["tokens"][0] = "<script>alert(1)</script>"
    (run / "contexts.json").write_text(json.dumps(contexts), encoding="utf-8")
    from difflens.report.page import render_report

    html = render_report(run).read_text(encoding="utf-8")
    assert "<script>alert" not in html and "&lt;script&gt;alert" in html
    # Resume: nothing that ran is recomputed (the passes would raise).
    def boom(*args, **kwargs):
        raise AssertionError("a finished stage was recomputed")

    monkeypatch.setattr(pca_runner, "accumulate", boom)
    monkeypatch.setattr(pca_runner, "top_contexts", boom)
    again = difflens.pca(out=str(tmp_path / "run"), pair=pair, progress=False, **config)
    assert again["pca"] == summary["pca"]
    # The agent's view: explained variance, both signs, contexts, samples; no model ids/paths.
    view = pca_results(run)
    assert "explained" in view.overview and "PC1" in view.overview
    assert {"readouts", "contexts", "steering"} <= set(view.sections)
    text = view.overview + "".join(view.sections.values())
    assert str(tmp_path) not in text and "run_dir" not in text


# ---- bad input ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("extra", "needle"), [
    (["--layers", "9"], "layer 9 is out of range"),
    (["--components", "0"], "components must be a positive integer"),
    (["--components", "33"], "exceeds the hidden size"),
    (["--contexts", "0"], "contexts must be"),
    (["--contexts", "1001"], "contexts must be"),
    (["--readout", "5", "--components", "4"], "readout (5) cannot exceed components"),
    (["--corpus", "<bos>"], "no valid positions"),
])
def test_bad_input_is_one_line(extra, needle, tiny_dir, tiny_ft_dir, tmp_path, capsys):
    bos_only = tmp_path / "bos.txt"
    bos_only.write_text("<s>\n<s>\n", encoding="utf-8")
    extra = [str(bos_only) if a == "<bos>" else a for a in extra]
    code = main(["pca", "--base", str(tiny_dir), "--finetuned", str(tiny_ft_dir), "--quiet",
                 "--out", str(tmp_path / "out"), *extra])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [x for x in err.strip().splitlines() if "Loading weights" not in x and x.strip()]
    assert len(lines) == 1 and lines[0].startswith("difflens: error: "), err
    assert needle in lines[0], lines[0]


def test_python_api_checks_components_against_d(tokenizer, corpus, tmp_path):
    model = tiny_model("llama", 0)
    pair = ModelPair.from_models(model, tiny_model("llama", 1), tokenizer)
    with pytest.raises(DifflensError, match="hidden size"):
        run_pca(PCAConfig(corpus=str(corpus), components=64, readout=1), tmp_path / "x",
                pair=pair, progress=False)
