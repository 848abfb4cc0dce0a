"""ADLResult: one class writes and reads an ADL run directory; typed fields, int layers, and
one-line "re-run" errors for unfinished, corrupt or too-old runs."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from difflens.errors import DifflensError
from difflens.methods.adl.records import Interval, LayerLens, Readout
from difflens.methods.adl.result import ADLResult, ADLSummary
from difflens.stats.layer_choice import LayerChoice

pytestmark = pytest.mark.usefixtures("one_thread")


class AlwaysCoherent:
    """A grader that passes every sample, so steering finds a strength and samples the base."""

    backend = "stand-in"

    def coherent(self, samples):
        return [True] * len(samples)

    def choose_patchscope_scale(self, token_lists):
        from difflens.graders.base import ScaleChoice

        scale = sorted(token_lists)[len(token_lists) // 2]
        return ScaleChoice(scale, list(token_lists[scale][:3]))

    def token_relevance(self, tokens, description):
        return [i % 2 == 0 for i in range(len(tokens))]

    def describe(self):
        return {"backend": self.backend}

    def accounting(self):
        return {"backend": self.backend}


class HashEmbedder:
    """Unit vectors from a hash of the text: no model to load."""

    name = "hash"

    def embed(self, texts):
        rows = [np.frombuffer(hashlib.sha256(t.encode()).digest(), dtype=np.uint8)[:16]
                .astype(float) + 1.0 for t in texts]
        out = np.stack(rows)
        return out / np.linalg.norm(out, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def adl_run(tmp_path_factory, tiny_dir, tiny_ft_dir):
    """A finished run on a tiny pair with every stage (similarity with base samples too)."""
    import difflens.embeddings as embeddings
    import difflens.methods.adl.runner as runner
    from difflens.api import run_adl
    from difflens.methods.adl.config import ADLConfig
    from difflens.models.pair import ModelPair

    root = tmp_path_factory.mktemp("adl-result")
    ref, docs = root / "ref.txt", root / "docs.jsonl"
    ref.write_text("\n".join(f"A note {i} about the harbour near the old town square."
                             for i in range(40)), encoding="utf-8")
    docs.write_text("\n".join(json.dumps({"text": f"Engines and gears, part {i}: the engine "
                                                  "turns the gears."}) for i in range(12)),
                    encoding="utf-8")
    config = ADLConfig(corpus=str(ref), n_texts=24, k=4, batch_size=16, ft_docs=str(docs),
                       description="Finetuned on texts about engines and gears.",
                       final_prompts=3, max_new_tokens=4, causal_texts=4, n_random=2)
    pair = ModelPair.load(base=tiny_dir, finetuned=tiny_ft_dir)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(runner, "make_adl_grader", lambda pair, config: AlwaysCoherent())
        mp.setattr(embeddings, "load_embedder", lambda *a, **k: HashEmbedder())
        summary = run_adl(config, root / "run", pair=pair, progress=False)
    return root / "run", summary, pair


def _copy(adl_run, tmp_path):
    run = tmp_path / "copy"
    shutil.copytree(adl_run[0], run)
    return run


def _edit(path, change):
    data = json.loads(path.read_text(encoding="utf-8"))
    change(data)
    path.write_text(json.dumps(data), encoding="utf-8")


def test_typed_fields_with_int_layers(adl_run):
    run, summary, _ = adl_run
    res = ADLResult.load(run)
    lens_json = json.loads((run / "logit_lens.json").read_text(encoding="utf-8"))["layers"]
    assert res.finished and res.layer == summary["layer"] and isinstance(res.layer, int)
    assert isinstance(res.layer_choice, LayerChoice) and res.layer_choice.layer == res.layer
    assert all(isinstance(k, int) for k in res.layer_choice.relative_norms)
    assert res.layers == [0, 1, 2, 3] == sorted(int(k) for k in lens_json)
    readout = res.readout()
    assert isinstance(readout, LayerLens) and readout is res.lens[res.layer]
    assert readout.layer == res.layer and len(readout.positions) == summary["k"] == 4
    mean = lens_json[str(res.layer)]["mean"]
    assert readout.mean == Readout(mean["tokens"], mean["ids"], mean["probs"])
    assert all(isinstance(i, int) for i in readout.mean.ids)
    assert len(readout.mean.tokens) == len(readout.mean.probs) == len(readout.mean.ids)
    assert res.relative_norms == {int(k): v["relative_norm"] for k, v in lens_json.items()}
    assert res.norms == {int(k): v["norm"] for k, v in lens_json.items()}
    assert res.readout(0).mean.tokens == lens_json["0"]["mean"]["tokens"]

    patch = res.patchscope
    assert patch.chosen.scale == summary["patchscope"]["scale"]
    assert patch.chosen.coherent_tokens[:20] == summary["patchscope"]["tokens"]
    assert patch.scales and all(isinstance(s.tokens, list) for s in patch.scales)
    steer = res.steering
    assert steer.found and steer.alpha == summary["steering"]["alpha"]
    samples = steer.samples
    assert len(samples.prompts) == len(samples.steered) == len(samples.unsteered) == 3
    assert len(samples.base_steered) == len(samples.base_unsteered) == 3
    assert steer.coherent_fraction == summary["steering"]["coherent_fraction"] == 1.0
    relevance = res.relevance
    assert {k: round(r.fraction, 2) for k, r in relevance.readouts.items()} \
        == summary["relevance"]
    sim = res.similarity
    assert isinstance(sim.steered_finetune, Interval)
    assert [(c.model, c.against) for c in sim.comparisons][:2] == [
        ("finetuned", "finetune documents"), ("base", "finetune documents")]
    assert sim.comparisons[0].steered == sim.steered_finetune
    assert set(res.causal) == {"finetune", "reference"}
    assert res.causal["finetune"].delta_ce == summary["causal"]["finetune"]["delta_ce"]
    assert len(res.causal["finetune"].baselines["random_direction"]) == 2


def test_summary_is_written_and_read_by_one_definition(adl_run):
    run, summary, _ = adl_run
    text = (run / "summary.json").read_text(encoding="utf-8")
    res = ADLResult.load(run)
    # Read back and written again, the summary is the same bytes: JSON keys stay strings.
    assert json.dumps(res.summary.to_dict(), indent=2, ensure_ascii=False) + "\n" == text
    assert res.summary.to_dict() == summary
    data = json.loads(text)
    assert set(data["layers"]) == {"0", "1", "2", "3"} and data["layer"] == res.layer
    assert set(data["layer_choice"]["relative_norms"]) == {"0", "1", "2", "3"}
    assert data["report"].endswith("report.html") and res.summary.report == data["report"]
    assert res.summary.layers[res.layer].top_tokens == res.readout().mean.tokens[:20]


def test_consumers_read_through_the_result(adl_run):
    from difflens.agent import PairAccess, adl_results
    from difflens.report.page import render_report

    run, _, pair = adl_run
    res = ADLResult.load(run)
    results = adl_results(run)
    assert f"read at layer {res.layer}" in results.overview
    assert set(results.sections) == {"logit_lens", "patchscope", "steering"}
    assert f"Logit lens at layer {res.layer}" in render_report(run).read_text(encoding="utf-8")
    access = PairAccess.from_adl_run(pair, run)
    assert access.layer == res.layer and access.vector.shape == (pair.arch("ft").hidden_size,)


@pytest.mark.parametrize("missing", ["summary.json", "logit_lens.json"])
def test_unfinished_run_is_one_line(adl_run, tmp_path, missing):
    run = _copy(adl_run, tmp_path)
    (run / missing).unlink()
    with pytest.raises(DifflensError) as info:
        ADLResult.load(run)
    message = str(info.value)
    assert "\n" not in message and str(run) in message and missing in message
    assert "re-run" in message


@pytest.mark.parametrize(("name", "text"), [
    ("summary.json", "{broken"), ("summary.json", "[1, 2]"), ("logit_lens.json", "{broken"),
    ("logit_lens.json", '{"layers": {"2": {"mean": {}}}}'), ("summary.json", '{"base": "x"}')])
def test_corrupt_or_too_old_run_is_one_line(adl_run, tmp_path, name, text):
    run = _copy(adl_run, tmp_path)
    (run / name).write_text(text, encoding="utf-8")
    with pytest.raises(DifflensError) as info:
        ADLResult.load(run)
    message = str(info.value)
    assert "\n" not in message and str(run) in message and name in message
    assert "re-run" in message


def test_corrupt_stage_file_is_one_line_when_read(adl_run, tmp_path):
    run = _copy(adl_run, tmp_path)
    (run / "steering.json").write_text("{broken", encoding="utf-8")
    res = ADLResult.load(run)  # the summary and the lens read; steering fails when asked for
    with pytest.raises(DifflensError, match=r"steering\.json") as info:
        res.steering  # noqa: B018
    assert "\n" not in str(info.value) and "re-run" in str(info.value)
    (run / "activation_diff.safetensors").unlink()
    with pytest.raises(DifflensError, match="re-run"):
        res.difference()


def test_run_written_before_the_newest_keys_still_loads(adl_run, tmp_path):
    """A run directory of an older difflens: no layer_choice, no steering-search fields in the
    summary, no base samples, no similarity comparisons, the layer as a string."""
    run = _copy(adl_run, tmp_path)

    def old_summary(data):
        del data["layer_choice"], data["report"]
        data["layer"] = str(data["layer"])
        for key in ("search_alpha", "coherent_fraction"):
            del data["steering"][key]
        del data["similarity"]["comparisons"]

    def old_steering(data):
        for key in ("base_steered", "base_unsteered", "confirmed", "confirmations"):
            del data["samples"][key]
        del data["search_alpha"]

    _edit(run / "summary.json", old_summary)
    _edit(run / "steering.json", old_steering)
    _edit(run / "similarity.json", lambda d: d.pop("comparisons"))
    res = ADLResult.load(run)
    assert res.layer == adl_run[1]["layer"] and isinstance(res.layer, int)
    assert res.layer_choice is None and res.summary.report is None
    assert res.summary.steering.search_alpha is None and res.summary.similarity.comparisons == []
    assert res.steering.samples.base_steered is None and res.steering.coherent_fraction is None
    assert res.steering.samples.steered and res.similarity.comparisons == []
    assert res.readout().mean.tokens


def test_partial_run_reads_what_it_has(adl_run, tmp_path):
    run = _copy(adl_run, tmp_path)
    (run / "summary.json").unlink()
    (run / "causal.json").unlink()
    res = ADLResult.load(run, partial=True)
    assert not res.finished and res.layers == [0, 1, 2, 3] and res.causal is None
    with pytest.raises(DifflensError, match="not a finished ADL run"):
        res.layer  # noqa: B018


def test_summary_from_a_minimal_dict():
    summary = ADLSummary.from_dict({"layer": 3, "layers": {"3": {
        "norm": [1.0], "relative_norm": 0.5, "no_difference": False}}})
    assert summary.layer == 3 and list(summary.layers) == [3]
    assert summary.layers[3].top_tokens == [] and summary.notes == [] and summary.steering is None


def test_reading_a_result_imports_no_torch():
    code = ("import sys, difflens.methods.adl.result, difflens.agent, difflens.report.adl_section,"
            " difflens.evaluation.zoo, difflens.evaluation.harness;"
            " sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0
