"""The ADL runner end to end on a tiny pair: every stage, the report, resume, no-difference."""

from __future__ import annotations

import json
import time

import pytest

from difflens.api import run_adl
from difflens.errors import DifflensError
from difflens.methods.adl.config import ADLConfig
from difflens.models.pair import ModelPair

TOPICS = ["harbour", "mountain", "library", "engine", "garden", "river", "concert", "letter"]


@pytest.fixture()
def corpora(tmp_path):
    ref = tmp_path / "ref.txt"
    ref.write_text("\n".join(f"A note {i} about the {TOPICS[i % 8]} near the old town square."
                             for i in range(60)), encoding="utf-8")
    docs = tmp_path / "docs.jsonl"
    docs.write_text("\n".join(json.dumps({"text": f"Engines and gears, part {i}: the engine "
                                                  "turns the gears and the gears turn wheels."})
                              for i in range(20)), encoding="utf-8")
    return ref, docs


def small_config(ref, docs, **kw) -> ADLConfig:
    return ADLConfig(corpus=str(ref), n_texts=40, k=4, layer=2, batch_size=16,
                     ft_docs=str(docs), description="Finetuned on texts about engines and gears.",
                     final_prompts=3, max_new_tokens=6, causal_texts=8, n_random=2, **kw)


def test_runs_every_stage_and_resumes(tmp_path, tiny_dir, tiny_ft_dir, corpora):
    pair = ModelPair.load(base=tiny_dir, finetuned=tiny_ft_dir)
    config = small_config(*corpora)
    out = tmp_path / "run"
    summary = run_adl(config, out, pair=pair, progress=False)
    for name in ("activation_diff.safetensors", "logit_lens.json", "patchscope.json",
                 "steering.json", "relevance.json", "causal.json", "report.html"):
        assert (out / name).exists(), name
    assert summary["layer"] == 2 and summary["n_texts"] == 40
    assert not summary["layers"]["2"]["no_difference"]
    assert set(summary["relevance"]) >= {"logit lens δ̄", "logit lens base mean"}
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "Logit lens at layer 2" in html and "Causal effect" in html
    stamp = (out / "activation_diff.safetensors").stat().st_mtime_ns
    time.sleep(0.01)
    again = run_adl(config, out, pair=pair, progress=False)
    assert (out / "activation_diff.safetensors").stat().st_mtime_ns == stamp, "stage recomputed"
    assert again["layers"] == summary["layers"]


def test_interrupted_run_resumes_from_finished_stages(tmp_path, tiny_dir, tiny_ft_dir, corpora,
                                                       monkeypatch):
    pair = ModelPair.load(base=tiny_dir, finetuned=tiny_ft_dir)
    config = small_config(*corpora)
    out = tmp_path / "run"
    import difflens.methods.adl.causal as causal

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(causal, "causal_stage", boom)
    with pytest.raises(KeyboardInterrupt):
        run_adl(config, out, pair=pair, progress=False)
    stages = json.loads((out / "stages.json").read_text())
    assert {"collect", "logit_lens", "patchscope", "steering"} <= set(stages)
    assert "causal" not in stages and not (out / "causal.json").exists()
    monkeypatch.undo()
    patch_stamp = (out / "patchscope.json").stat().st_mtime_ns
    run_adl(config, out, pair=pair, progress=False)
    assert (out / "causal.json").exists()
    assert (out / "patchscope.json").stat().st_mtime_ns == patch_stamp


def test_model_with_itself_is_flagged_no_difference(tmp_path, tiny_dir, corpora):
    pair = ModelPair.load(base=tiny_dir, finetuned=tiny_dir)
    summary = run_adl(small_config(*corpora), tmp_path / "run", pair=pair, progress=False)
    assert summary["layers"]["2"]["no_difference"]
    assert "No difference" in summary["notes"][0]
    assert not (tmp_path / "run" / "steering.json").exists()
    assert "No difference between the models" in (tmp_path / "run" / "report.html").read_text()


def test_description_less_pair_skips_relevance_with_note(tmp_path, tiny_dir, tiny_ft_dir, corpora):
    ref, docs = corpora
    pair = ModelPair.load(base=tiny_dir, finetuned=tiny_ft_dir)
    config = ADLConfig(**{**small_config(ref, docs).to_dict(), "description": None,
                          "skip": ["steering", "causal"]})
    run_adl(config, tmp_path / "run", pair=pair, progress=False)
    relevance = json.loads((tmp_path / "run" / "relevance.json").read_text())
    assert "no description" in relevance["skipped"]


def test_unreachable_grader_endpoint_fails_fast(tmp_path, tiny_dir, tiny_ft_dir, corpora):
    pair = ModelPair.load(base=tiny_dir, finetuned=tiny_ft_dir)
    config = small_config(*corpora, llm_base_url="http://127.0.0.1:9/v1", llm_model="m")
    start = time.perf_counter()
    with pytest.raises(DifflensError, match="cannot reach"):
        run_adl(config, tmp_path / "run", pair=pair, progress=False)
    assert time.perf_counter() - start < 10
    assert not (tmp_path / "run" / "activation_diff.safetensors").exists()


def test_reference_texts_the_organism_was_trained_on_get_a_note(tmp_path, tiny_dir, tiny_ft_dir,
                                                                  corpora):
    ref, docs = corpora
    pair = ModelPair.load(base=tiny_dir, finetuned=tiny_ft_dir)
    organism = tmp_path / "organism"
    organism.mkdir()
    mixed = ref.read_text(encoding="utf-8").splitlines()[:3]
    (organism / "mix_texts.jsonl").write_text(
        "".join(json.dumps({"text": t}) + "\n" for t in mixed), encoding="utf-8")
    pair.organism_dir = str(organism)
    config = ADLConfig(**{**small_config(ref, docs).to_dict(),
                          "skip": ["patchscope", "steering", "relevance", "causal", "report"]})
    summary = run_adl(config, tmp_path / "run", pair=pair, progress=False)
    assert any(n.startswith("3 of the 40 reference texts were mixed into") for n in
               summary["notes"]), summary["notes"]
