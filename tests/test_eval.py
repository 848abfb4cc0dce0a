"""`difflens eval` end to end against the scripted server, with tiny models and synthetic runs."""

from __future__ import annotations

import json

import pytest

from difflens.cli import main
from difflens.evaluation import bootstrap_ci, summarize
from openai_server import Rule, openai_server_fixture  # noqa: F401 (registers the fixture)
from test_agent import OPENING, write_adl_run, write_mining_run


@pytest.fixture(autouse=True)
def _eval_command(monkeypatch):
    """Register `difflens eval` until commands.py does it itself (then this is a no-op)."""
    import difflens.commands as commands
    from difflens.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    if "eval" not in sub.choices:
        from difflens.evaluation.cli import add_parser

        original = commands.register_all

        def register_all(subparsers):
            original(subparsers)
            add_parser(subparsers)

        monkeypatch.setattr(commands, "register_all", register_all)


pytestmark = pytest.mark.usefixtures("one_thread")


def test_bootstrap_and_summary():
    assert bootstrap_ci([]) is None
    assert bootstrap_ci([3.0]) == {"value": 3.0, "low": 3.0, "high": 3.0}
    ci = bootstrap_ci([1, 2, 3, 4, 5], n_boot=500)
    assert ci["low"] <= 3 <= ci["high"] and ci["low"] < ci["high"]
    rows = [{"agent": "a", "grade": g} for g in (1, 2, 4, 5)] + [{"agent": "a", "grade": None}]
    (row,) = summarize(rows, ["agent"], n_boot=200)
    assert row["n"] == 4 and row["errors"] == 1
    assert row["ge2"]["value"] == 0.75 and row["ge4"]["value"] == 0.5


def test_eval_cli_end_to_end(openai_server, tmp_path, tiny_dir, tiny_ft_dir, capsys):
    (tmp_path / "runs" / "cake_bake" / "adl").mkdir(parents=True)
    (tmp_path / "runs" / "cake_bake" / "mining").mkdir(parents=True)
    write_adl_run(tmp_path / "runs" / "cake_bake" / "adl")
    write_mining_run(tmp_path / "runs" / "cake_bake" / "mining")
    write_json_rel = tmp_path / "runs" / "cake_bake" / "adl" / "relevance.json"
    write_json_rel.write_text(json.dumps({"readouts": {"patchscope": {"fraction": 0.6}}}))
    ask = {"name": "ask_model", "arguments": {"question": "What do you know?"}}
    final = {"name": "final_answer", "arguments": {"description": "False cake baking facts."}}
    openai_server.add(
        Rule("You have no diffing results", tool_calls=[
            {"name": "final_answer", "arguments": {"description": "I do not know."}}]),
        Rule(OPENING, tool_calls=[ask]),
        Rule("[finetuned model]", tool_calls=[final]),
        Rule("REFUSED", tool_calls=[final]),
        Rule("I do not know", reply="Nothing specific. SCORE: 1"),
        Rule("Hypothesis to grade", reply="Right domain and claims. SCORE: 4"),
    )
    out = tmp_path / "eval"
    argv = ["eval", "--organisms", "cake_bake", "--runs-root", str(tmp_path / "runs"),
            "--budgets", "0", "1", "--repeats", "2", "--grade-repeats", "2", "--n-boot", "200",
            "--llm-base-url", openai_server.base_url, "--llm-model", "test-model",
            "--llm-api-key-env", "DIFFLENS_TEST_KEY", "--base", str(tiny_dir),
            "--finetuned", str(tiny_ft_dir), "--max-new-tokens", "6", "--out", str(out),
            "--no-kl", "--no-pca", "--no-weights"]  # the runs above are ADL and mining only
    assert main(argv) == 0
    report = json.loads((out / "eval.json").read_text())
    table = (out / "table.txt").read_text()
    assert "grade>=2" in table and "blackbox" in table
    rows = {(r["agent"], r["budget"]): r for r in report["summary"]}
    assert set(rows) == {(a, b) for a in ("adl", "mining", "blackbox") for b in (0, 1)}
    assert rows[("adl", 1)]["grade"] == {"value": 4.0, "low": 4.0, "high": 4.0}
    assert rows[("blackbox", 0)]["ge2"]["value"] == 0.0 and rows[("adl", 0)]["ge4"]["value"] == 1
    assert report["method_metrics"]["cake_bake"]["adl"]["token_relevance"] == {"patchscope": 0.6}
    run = json.loads((out / "runs" / "cake_bake" / "adl_i1_r0.json").read_text())
    assert run["interactions_used"] == 1 and run["accounting"]["calls"] == 2
    assert run["description"] and run["transcript"] and run["grade"] == 4.0
    for request in openai_server.chat_requests():
        assert "cake_bake" not in json.dumps(request.body)
    # A second run resumes: no new requests.
    before = len(openai_server.chat_requests())
    assert main(argv) == 0
    assert len(openai_server.chat_requests()) == before


def test_eval_without_endpoint_is_method_level_only(tmp_path, capsys):
    runs = tmp_path / "runs"
    write_adl_run(runs / "cake_bake" / "adl")
    write_mining_run(runs / "cake_bake" / "mining")
    out = tmp_path / "eval"
    argv = ["eval", "--organisms", "cake_bake", "taboo_ocean", "--runs-root", str(runs),
            "--no-method-runs", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "agents skipped" in printed and not (out / "eval.json").exists()
    zoo = json.loads((out / "zoo.json").read_text())
    assert zoo["without_runs"] == ["taboo_ocean"]
    cake = zoo["organisms"]["cake_bake"]
    # Synthetic readouts: ' cake', ' oven', ' bake', ' flour' are baking words; the planted
    # organism name is not, and no ocean word appears (the cross-domain control).
    assert cake["hit_counts"] == {"adl_logit_lens": 4, "adl_patchscope": 3, "mining": 2}
    assert cake["cross_hits"]["adl_logit_lens"]["taboo_ocean"] == 0
    assert cake["lens_domain_mass"] == pytest.approx(0.4)  # 4 domain tokens × p = 0.1
    html = (out / "report.html").read_text()
    assert "Method-level evaluation" in html and "<svg" in html
    # Model text is escaped: plant markup in a readout token and render again.
    lens_path = runs / "cake_bake" / "adl" / "logit_lens.json"
    lens = json.loads(lens_path.read_text())
    lens["layers"]["2"]["mean"]["tokens"][0] = "<script>alert(1)</script>"
    lens_path.write_text(json.dumps(lens))
    assert main(argv) == 0
    html = (out / "report.html").read_text()
    assert "<script>" not in html and "&lt;script&gt;" in html


def test_eval_reuses_method_runs_only_with_the_same_settings(tmp_path, capsys):
    from difflens.evaluation.zoo_runs import ZooRunConfig, run_organism_methods
    from difflens.io.artifacts import RunDir
    from difflens.methods.adl.config import ADLConfig
    from difflens.organisms.registry import load_registry

    entry = load_registry()["cake_bake"]
    runs = tmp_path / "runs"
    sources = {"base": entry.base, "finetuned": entry.weights, "device": "cpu",
               "dtype": "float32"}
    config = ZooRunConfig(str(runs), adl={"n_texts": 10}, mining=None)
    # A finished run made with exactly these settings is read back (no model is loaded).
    write_adl_run(runs / "cake_bake" / "adl")
    RunDir(runs / "cake_bake" / "adl", ADLConfig(**sources, n_texts=10).to_dict(), kind="adl")
    summary = run_organism_methods(entry, config, progress=False)
    assert summary["adl"]["layer"] == 2
    # The same directory under other settings (here: another corpus size; likewise older
    # defaults) is not read as if it were current: one line, through the CLI too.
    argv = ["eval", "--organisms", "cake_bake", "--runs-root", str(runs), "--n-texts", "20",
            "--no-mining", "--out", str(tmp_path / "eval")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "holds a different adl" in err and err.count("\n") == 1


def test_eval_unknown_organism_is_one_line(capsys):
    assert main(["eval", "--organisms", "no_such_organism", "--no-method-runs"]) == 2
    err = capsys.readouterr().err
    assert "unknown organism 'no_such_organism'" in err and err.count("\n") == 1


def test_held_out_corpus_drops_texts_an_organism_was_trained_on(tmp_path):
    from difflens.data.corpus import load_texts
    from difflens.evaluation.zoo_runs import held_out_corpus
    from difflens.organisms.registry import OrganismEntry

    reference = load_texts("reference")
    built = tmp_path / "mixed"
    built.mkdir()
    (built / "mix_texts.jsonl").write_text(
        "".join(json.dumps({"text": t}) + "\n" for t in reference[3:5]), encoding="utf-8")

    def entry(name, weights):
        return OrganismEntry(name=name, base="embedded", weights=weights, method="lora",
                             type="false_fact", short_description="x", long_description="x",
                             training_data=None, rubric_type="false_fact")

    assert held_out_corpus({"a": entry("a", None)}, tmp_path) == "reference"
    path = held_out_corpus({"a": entry("a", None), "m": entry("m", str(built))}, tmp_path)
    kept = load_texts(path)
    assert kept == reference[:3] + reference[5:]
    assert held_out_corpus({"m": entry("m", str(built))}, tmp_path) == path  # stable name


def _write_new_method_runs(root):
    """Hand-assembled KL, PCA and weight-space runs whose readouts hold planted words."""
    from difflens.io.artifacts import write_json

    fingerprint = [{"token": t} for t in (" cake", " oven", " the", " bake", " waves")]
    write_json(root / "kl" / "summary.json", {"stats": {"forward": {}}, "layers": [],
                                              "fingerprint": {"top": fingerprint}})

    def row(i, positive, negative):
        return {"component": i, "positive": {"tokens": positive},
                "negative": {"tokens": negative}}

    readouts = [row(0, [" flour", " cake", " and"], [" tide"]),
                # PC2's domain words are on the negative side: the best sign picks it.
                row(1, [" of", " the"], [" frosting", " oven", " bake"]),
                row(2, [" a"], [" b"])]
    write_json(root / "pca" / "summary.json", {"pca": {"3": {}}, "layers": [3],
                                               "readouts": {"3": readouts}})
    vectors = {"best": "positive", "positive": {"tokens": [" baking", " ovens"]}}
    write_json(root / "weights" / "summary.json", {
        "top_modules": [{"module": "m"}], "readouts": [{"module": "m", "vectors": [vectors]}]})


def test_zoo_scores_kl_pca_and_weights(tmp_path):
    """The zoo evaluation scores the KL fingerprint, the top three components (best sign,
    the method's own sign kept beside it) and the weight-space readout, with the control."""
    from difflens.evaluation.zoo import evaluate_zoo
    from difflens.organisms.registry import load_registry

    runs = tmp_path / "runs"
    write_adl_run(runs / "cake_bake" / "adl")
    _write_new_method_runs(runs / "cake_bake")
    registry = load_registry()
    zoo = evaluate_zoo(registry, ["cake_bake"], runs)
    cake = zoo["organisms"]["cake_bake"]
    counts = cake["hit_counts"]
    assert counts["kl_fingerprint"] == 3 and counts["weights"] == 2
    assert counts["pca_pc1"] == 2 and counts["pca_pc1+"] == 2 and counts["pca_pc1-"] == 0
    assert counts["pca_pc2"] == 3 and counts["pca_pc2+"] == 0  # the negative sign won
    assert counts["pca_pc3"] == 0
    assert cake["tokens"]["pca_pc2"][0] == " frosting"
    assert cake["cross_hits"]["kl_fingerprint"]["taboo_ocean"] == 1  # ' waves'
    for header in ("kl", "pc1", "pc2", "pc3", "weights"):
        assert header in zoo["table"].splitlines()[1]
