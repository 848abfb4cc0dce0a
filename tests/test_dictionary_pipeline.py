"""Training on the cache (exact resume), analysis, report, and their bad-input errors."""

from __future__ import annotations

import json
import shutil
import time

import pytest
import torch

from difflens.errors import DifflensError
from difflens.methods.dictionary import TrainConfig, Trainer, latent_scaling, load_dictionary
from difflens.methods.dictionary.analysis import AnalysisConfig, analyze
from difflens.methods.dictionary.cache import ActivationCache
from difflens.methods.dictionary.report import render_section
from difflens.methods.dictionary.runner import CacheConfig, ReadConfig, build_cache, train_on_cache
from difflens.models.pair import ModelPair, default_organism_dir
from test_dictionary_cache import cli, write_corpus

LAYER = 2


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pair(tiny_dir, tiny_ft_dir):
    return ModelPair.load(str(tiny_dir), str(tiny_ft_dir))


@pytest.fixture(scope="module")
def cache(pair, tmp_path_factory) -> ActivationCache:
    root = tmp_path_factory.mktemp("pipeline")
    corpus = write_corpus(root / "corpus.txt", n=60, seed=1)
    config = CacheConfig(corpus=str(corpus), max_tokens=16, layers=[LAYER],
                         tokens_per_shard=150, batch_size=16)
    return build_cache(pair, config, root / "cache", progress=False)


def train_config(**overrides) -> TrainConfig:
    base = dict(steps=12, batch_size=128, lr=5e-3, warmup_steps=2, checkpoint_every=4,
                progress=False, log_every=2)
    return TrainConfig(**{**base, **overrides})


READ = ReadConfig(buffer_rows=64, chunk_rows=10)


class Interrupted(Exception):
    pass


@pytest.mark.parametrize("kind", ["crosscoder", "diff_sae"])
def test_interrupted_training_resumes_identically(kind, cache, tmp_path, monkeypatch):
    kw = dict(dictionary={"width": 48, "k": 4, "seed": 3}, train=train_config(), read=READ)
    full = train_on_cache(kind, cache.path, tmp_path / "full", **kw)
    assert full.step == 12 and 1.5 * cache.n_rows < 12 * 128  # crosses epoch boundaries
    original = Trainer.save_checkpoint

    def crash_after_step_8(self):
        path = original(self)
        if self.step == 8:
            raise Interrupted
        return path

    monkeypatch.setattr(Trainer, "save_checkpoint", crash_after_step_8)
    with pytest.raises(Interrupted):
        train_on_cache(kind, cache.path, tmp_path / "cut", **kw)
    monkeypatch.undo()
    resumed = train_on_cache(kind, cache.path, tmp_path / "cut", **kw)
    assert resumed.resumed_from == 8 and resumed.log == full.log
    a = load_dictionary(tmp_path / "full" / "dictionary").state_dict()
    b = load_dictionary(tmp_path / "cut" / "dictionary").state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_scales_come_from_the_cache_statistics(cache, tmp_path):
    train_on_cache("crosscoder", cache.path, tmp_path / "cc", dictionary={"width": 16, "k": 2},
                   train=train_config(steps=1), read=READ)
    cc = load_dictionary(tmp_path / "cc" / "dictionary")
    expected = 32**0.5 / cache.stats(LAYER).mean_norm.float()
    torch.testing.assert_close(cc.normalizer.scale, expected)


@pytest.fixture(scope="module")
def trained(cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("trained") / "cc"
    train_on_cache("crosscoder", cache.path, out, dictionary={"width": 64, "k": 4, "seed": 1},
                   train=train_config(steps=40, batch_size=64), read=READ)
    return out


CONFIG = AnalysisConfig(top_contexts=5, max_latents=6, steer_latents=2, steer_alphas=(0.5,),
                        steer_prompts=2, max_new_tokens=6)


def test_analysis_end_to_end(pair, cache, trained):
    metrics = analyze(trained, pair=pair, config=CONFIG, progress=False)
    run = trained / "analysis"
    rows = json.loads((run / "latents.json").read_text())
    cc = load_dictionary(trained / "dictionary").eval()
    assert len(rows) == 64 and {r["tag"] for r in rows} <= {"ft_only", "base_only", "shared",
                                                             "other"}
    for name in ("base", "ft"):
        assert metrics["fve"][name] > metrics["fve_zero_latents"][name]
    assert sum(metrics["delta_norm_histogram"]["counts"]) == 64
    assert metrics["l0"] > 0 and 0 <= metrics["dead_fraction"] <= 1

    # Latent Scaling of the streaming pass = the core's, over the same validation rows.
    scaled = [r["latent"] for r in rows if r.get("group")]
    assert scaled and {r["group"] for r in rows if r.get("group")} >= {"control"}
    val = cache.reader(LAYER, "val", shuffle=False)
    core = latent_scaling(cc, val, scaled, raw_units=True)
    for i, j in enumerate(scaled):
        expected = core.beta_error[:, i].tolist() + core.nu_reconstruction[i:i + 1].tolist()
        got = [rows[j]["beta_error_base"], rows[j]["beta_error_ft"], rows[j]["nu_reconstruction"]]
        for e, g in zip(expected, got, strict=True):
            assert (g is None and e != e) or g == pytest.approx(e, rel=1e-5, abs=1e-9)

    # Contexts are rebuilt from the cache: the window's tokens and the latent's activations.
    contexts = json.loads((run / "contexts.json").read_text())["latents"]
    j, ctx = next((int(j), c[0]) for j, c in contexts.items() if c)
    data = cache.read_shard(ctx["shard"])
    seq = next(s for s in cache.sequences(ctx["shard"]) if s.seq == int(data.seq[ctx["row"]]))
    lo = ctx["position"] - ctx["focus"]
    assert ctx["token_ids"] == seq.tokens[lo: lo + len(ctx["token_ids"])]
    assert "".join(ctx["tokens"]) == pair.tokenizer.decode(ctx["token_ids"])
    with torch.no_grad():
        act = float(cc(data.acts[LAYER][ctx["row"]: ctx["row"] + 1]).latents[0, j])
    assert ctx["activation"] == pytest.approx(act, rel=1e-4)
    assert ctx["acts"][ctx["focus"]] == pytest.approx(act, rel=1e-4)

    lens = json.loads((run / "lens.json").read_text())
    assert set(lens) == set(contexts) and all(len(v) == CONFIG.lens_tokens for v in lens.values())
    steering = json.loads((run / "steering.json").read_text())
    assert len(steering["samples"]) == 2 + 2 * 1 * 2  # unsteered + latents x alphas x prompts
    assert steering["scale"] == pytest.approx(float(cache.stats(LAYER).mean_norm[1]))

    stamp = (run / "latents.json").stat().st_mtime_ns
    analyze(trained, pair=pair, config=CONFIG, progress=False)  # finished stages are reused
    assert (run / "latents.json").stat().st_mtime_ns == stamp

    html = render_section(run)
    assert "<svg" in html and "dl-sort" in html and html.count("<script>") == 1
    assert "Latent Scaling" in html and f"id='latent-{j}'" in html


def test_diff_sae_analysis_without_then_with_models(pair, cache, tmp_path):
    out = tmp_path / "sae"
    train_on_cache("diff_sae", cache.path, out, dictionary={"width": 32, "k": 4},
                   train=train_config(steps=20, batch_size=64), read=READ)
    metrics = analyze(out, config=CONFIG, progress=False)
    assert set(metrics["fve"]) == {"diff"} and "tags" not in metrics
    contexts = json.loads((out / "analysis" / "contexts.json").read_text())["latents"]
    assert contexts and all("tokens" not in c for cs in contexts.values() for c in cs)
    assert "Latent details" in render_section(out / "analysis")
    analyze(out, pair=pair, config=CONFIG, progress=False)  # now decoded, with lens/steering
    contexts = json.loads((out / "analysis" / "contexts.json").read_text())["latents"]
    assert all("tokens" in c for cs in contexts.values() for c in cs)
    assert (out / "analysis" / "lens.json").is_file()
    assert "diff-SAE" in render_section(out / "analysis")


def test_report_escapes_model_and_corpus_text(pair, trained, tmp_path):
    run = tmp_path / "run"
    analyze(trained, run, pair=pair, config=CONFIG, progress=False)
    evil = "<script>alert(1)</script>"
    contexts = json.loads((run / "contexts.json").read_text())
    for cs in contexts["latents"].values():
        for c in cs:
            c["tokens"] = [evil] * len(c["tokens"])
    (run / "contexts.json").write_text(json.dumps(contexts))
    lens = json.loads((run / "lens.json").read_text())
    for tokens in lens.values():
        tokens[0]["token"] = "</td><img src=x onerror=alert(2)>"
    (run / "lens.json").write_text(json.dumps(lens))
    steering = json.loads((run / "steering.json").read_text())
    for s in steering["samples"]:
        s["text"], s["prompt"] = "<b onmouseover=alert(3)>hi</b>", "<i>&amp;</i>"
    (run / "steering.json").write_text(json.dumps(steering))
    html = render_section(run)
    assert html.count("<script>") == 1  # only the sorter
    assert "alert(1)" in html and "<img" not in html and "<b onmouseover" not in html
    assert "&lt;script&gt;" in html and "&lt;i&gt;&amp;amp;" in html


def test_wrong_width_dictionary_one_line(capsys, cache, trained, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(trained / "dictionary", bad)
    config = json.loads((bad / "config.json").read_text())
    config["config"]["width"] = 80
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(DifflensError) as err:
        load_dictionary(bad)
    assert "\n" not in str(err.value) and "(64," in str(err.value)
    code, line = cli(capsys, "analyze", bad, "--cache", cache.path, "--no-models", "--quiet")
    assert code == 2 and line.startswith("difflens: error: ") and "bad" in line
    # Resuming a run into its directory with another width is refused, too.
    code, line = cli(capsys, "train", "crosscoder", "--cache", cache.path, "--width", 80,
                     "--k", 4, "--steps", 40, "--batch-size", 64, "--out", trained, "--quiet")
    assert code == 2 and "holds another training run" in line and "dictionary" in line


def test_dictionary_for_other_width_activations(cache, tmp_path):
    from difflens.methods.dictionary import Crosscoder, DictionaryConfig

    Crosscoder(DictionaryConfig(d_in=16, width=8, k=2)).save(tmp_path / "d16")
    with pytest.raises(DifflensError, match="reads d=16 but the cache"):
        analyze(tmp_path / "d16", cache=cache.path, progress=False)
    with pytest.raises(DifflensError, match="records no activation cache"):
        analyze(tmp_path / "d16", progress=False)


def test_cli_train_and_analyze(capsys, cache, tmp_path):
    for kind in ("crosscoder", "diff-sae"):
        out = tmp_path / kind
        code = cli(capsys, "train", kind, "--cache", cache.path, "--width", 32, "--k", 4,
                   "--steps", 6, "--batch-size", 64, "--lr", 0.005, "--out", out, "--quiet")[0]
        assert code == 0 and (out / "dictionary" / "config.json").is_file()
        code = cli(capsys, "analyze", out, "--no-models", "--quiet")[0]
        assert code == 0 and (out / "analysis" / "metrics.json").is_file()


# ---- integration: the embedded gemma-3-270m pair and the shipped organism -------------------
def run_embedded_pipeline(pair: ModelPair, root, n_texts: int = 200) -> dict[str, float]:
    """Cache -> crosscoder + diff-SAE -> analysis -> report; returns seconds per phase."""
    times, start = {}, time.perf_counter()
    config = CacheConfig(corpus="reference", n_texts=n_texts, max_tokens=32, layers=[13],
                         tokens_per_shard=2048, batch_size=16)
    cache = build_cache(pair, config, root / "cache", progress=False)
    assert cache.n_rows > 25 * n_texts
    times["cache"] = time.perf_counter() - start
    train = TrainConfig(steps=150, batch_size=256, lr=2e-3, warmup_steps=10,
                        checkpoint_every=50, progress=False, log_every=25)
    readouts = AnalysisConfig(max_latents=8, top_contexts=5, steer_latents=1,
                              steer_alphas=(0.25,), steer_prompts=2, max_new_tokens=12)
    for kind in ("crosscoder", "diff_sae"):
        start = time.perf_counter()
        # θ (the inference threshold) is an EMA over training batches: over 150 steps it must
        # follow the dictionary much faster than the 0.999 meant for runs of 10k+ steps.
        dictionary = {"width": 1024, "k": 32, "threshold_decay": 0.9}
        train_on_cache(kind, cache.path, root / kind, dictionary=dictionary, train=train,
                       read=ReadConfig(buffer_rows=4096, chunk_rows=1024))
        times[f"train {kind}"] = time.perf_counter() - start
        start = time.perf_counter()
        metrics = analyze(root / kind, pair=pair, config=readouts, progress=False)
        for name, value in metrics["fve"].items():
            assert value > metrics["fve_zero_latents"][name] + 0.2, metrics
        html = render_section(root / kind / "analysis")
        assert "Latent details" in html and "logit lens" in html
        times[f"analyze {kind}"] = time.perf_counter() - start
        times[f"fve {kind}"] = min(metrics["fve"].values())
    return times


@pytest.mark.integration
def test_embedded_pair_end_to_end(tmp_path):
    card = default_organism_dir() / "card.json"
    if not card.is_file():
        pytest.skip(f"the shipped organism is not built yet ({card} is missing); build it with "
                    "`difflens organism build` to run this test")
    times = run_embedded_pipeline(ModelPair.load(), tmp_path)
    print(times)
