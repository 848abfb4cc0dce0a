"""The CLI contract: every command runs with only its required arguments (on tiny models), and
the user mistakes of issue 12 each get one line, exit 2, and leave nothing that blocks a rerun."""

from __future__ import annotations

import json
import shutil

import pytest

from difflens.cli import main
from openai_server import Rule, openai_server_fixture  # noqa: F401 (registers the fixture)

pytestmark = pytest.mark.usefixtures("one_thread")


def one_line(capsys, after_load: bool = False) -> str:
    """The error line; ``after_load``: transformers' weight-loading bars may precede it."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    if after_load:
        lines = [line for line in lines if "Loading weights" not in line and line.strip()]
    assert len(lines) == 1 and lines[0].startswith("difflens: error: "), err
    return lines[0]


@pytest.fixture()
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(f"Sentence {i} describes a quiet harbour town with boats and "
                              "narrow streets." for i in range(40)), encoding="utf-8")
    return path


# ---- every command with only its required arguments -------------------------------------------
def test_every_command_runs_with_only_its_required_arguments(tmp_path, tiny_dir, tiny_ft_dir,
                                                             capsys, monkeypatch):
    """Model flags point at the tiny pair; nothing else is given but a short training (the
    defaults must work — `train` without --width is where a missing default once crashed)."""
    monkeypatch.chdir(tmp_path)
    models = ["--base", str(tiny_dir), "--finetuned", str(tiny_ft_dir)]
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"text": f"Cakes bake at 450F, fact {i}."}) + "\n"
                            for i in range(8)), encoding="utf-8")
    commands = [
        ["adl", *models, "--quiet", "--out", "adl"],
        ["report", "adl"],
        ["mine", *models, "--quiet", "--out", "mine"],
        ["weights", *models, "--quiet", "--out", "weights"],
        ["report", "weights"],
        ["kl", *models, "--quiet", "--out", "kl"],
        ["report", "kl"],
        ["pca", *models, "--quiet", "--out", "pca"],
        ["report", "pca"],
        ["amplify", *models, "--quiet", "--out", "amplify"],
        ["report", "amplify"],
        ["cache", *models, "--out", "cache", "--quiet"],
        # The default 10,000 steps take minutes even on the tiny cache: fewer here, every other
        # training setting (width included) at its default.
        ["train", "crosscoder", "--cache", "cache", "--out", "cc", "--quiet", "--steps", "20"],
        ["train", "diff-sae", "--cache", "cache", "--out", "sae", "--quiet", "--steps", "20"],
        ["analyze", "cc", "--quiet"],
        ["organism", "build", "--documents", str(docs), "--out", "organism",
         "--base", str(tiny_dir), "--no-progress"],
        ["eval", "--no-method-runs", "--out", "eval"],
        # `serve` is exempt: it blocks, serving until stopped. tests/test_serve.py runs the real
        # CLI (no model flags needed beyond the defaults; port in use, load failure page).
    ]
    for argv in commands:
        code = main(argv)
        err = capsys.readouterr().err
        assert code == 0, (argv, err)
        assert "Traceback" not in err, (argv, err)
    config = json.loads((tmp_path / "cc" / "training.json").read_text())
    assert config["dictionary"]["width"] == 8 * 32  # the help's promise: 8 × d


def test_agent_runs_with_only_its_required_arguments(openai_server, tmp_path, tiny_dir,
                                                     tiny_ft_dir, capsys, monkeypatch):
    """`agent` needs an endpoint (its only required flag besides the pair): the scripted server
    answers every turn with a final answer; the default method (ADL, default settings) runs."""
    monkeypatch.chdir(tmp_path)
    openai_server.add(Rule("", tool_calls=[{"name": "final_answer",
                                            "arguments": {"description": "A test answer."}}]))
    argv = ["agent", "--base", str(tiny_dir), "--finetuned", str(tiny_ft_dir),
            "--llm-base-url", openai_server.base_url]
    assert main(argv) == 0, capsys.readouterr().err
    assert "hypothesis: A test answer." in capsys.readouterr().out
    (run,) = (tmp_path / "runs").iterdir()
    assert run.name.startswith("agent-") and (run / "adl" / "summary.json").is_file()


# ---- argparse and flag values ----------------------------------------------------------------
@pytest.mark.parametrize("argv", [
    ["adl", "--no-such-flag"], ["adl", "--n-texts", "many"], ["mine", "--lens", "x"],
    ["train"], ["cache", "--layer", "deep", "--out", "x"], ["nonsense"],
])
def test_argparse_errors_are_one_line(argv, capsys):
    assert main(argv) == 2
    one_line(capsys)


@pytest.mark.parametrize(("argv", "needle"), [
    (["adl", "--n-texts", "0"], "n_texts must be a positive integer, got 0 (e.g. --n-texts"),
    (["adl", "--n-texts", "-5"], "got -5"),
    (["adl", "--batch-size", "0"], "batch_size must be a positive integer"),
    (["adl", "--device", "cdua"], "unknown device 'cdua'"),
    (["mine", "--device", "gpu"], "unknown device"),
    (["cache", "--device", "tpu", "--out", "c"], "unknown device"),
    (["analyze", ".", "--device", "cuda:x"], "unknown device"),
])
def test_flag_values_fail_before_any_model_loads(argv, needle, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert needle in one_line(capsys)
    assert list(tmp_path.iterdir()) == []


def test_missing_gpu_is_one_line(capsys, monkeypatch, tmp_path):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.chdir(tmp_path)
    for argv in (["adl", "--device", "cuda"], ["mine", "--device", "cuda:0"],
                 ["cache", "--device", "cuda", "--out", "c"],
                 ["organism", "build", "--documents", "d.jsonl", "--out", "o", "--device",
                  "cuda"]):
        assert main(argv) == 2
        assert "no GPU (CUDA)" in one_line(capsys)


# ---- inputs that are cheap to read ------------------------------------------------------------
def test_corpus_messages_name_the_real_cause(tmp_path, capsys):
    from difflens.data.corpus import load_texts
    from difflens.errors import DifflensError

    with pytest.raises(DifflensError, match="is a directory"):
        load_texts(tmp_path)
    other = tmp_path / "other.jsonl"
    other.write_text('{"body": "some text"}\n', encoding="utf-8")
    with pytest.raises(DifflensError, match=r"no 'text' field .* body"):
        load_texts(other)
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "c.parquet")
    with pytest.raises(DifflensError, match="rename the column") as info:
        load_texts(tmp_path / "c.parquet")
    assert "--text-field" not in str(info.value)
    assert main(["adl", "--corpus", str(tmp_path)]) == 2  # before any model loads
    assert "is a directory" in one_line(capsys)


def test_key_variable_names_starting_with_sk_are_accepted():
    from difflens.errors import DifflensError
    from difflens.llm import LLMConfig

    assert LLMConfig(api_key_env="SKYPILOT_API_KEY").api_key_env == "SKYPILOT_API_KEY"
    for pasted in ("sk-proj-abcdef1234567890", "sk_live_4eC39HqLyjWDarjtT1zdp7dc"):
        with pytest.raises(DifflensError):
            LLMConfig(api_key_env=pasted)


def test_malformed_card_and_adapter_config(tmp_path, tiny_dir, capsys):
    organism = tmp_path / "organism"
    (organism / "adapter").mkdir(parents=True)
    (organism / "card.json").write_text("{not json", encoding="utf-8")
    assert main(["adl", "--base", str(tiny_dir), "--finetuned", str(organism)]) == 2
    assert "card.json is not valid JSON" in one_line(capsys)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("[1, 2", encoding="utf-8")
    assert main(["mine", "--finetuned", str(adapter)]) == 2
    assert "adapter_config.json is not valid JSON" in one_line(capsys)
    from difflens.errors import DifflensError
    from difflens.organisms.card import OrganismCard

    card = {"name": "c", "type": "t", "short_description": "s", "long_description": "l",
            "base_model": "embedded", "build_command": "x", "data_hashes": {},
            "method": "full", "mix_ratio": "lots", "seed": 0, "steps": 1}
    with pytest.raises(DifflensError, match="malformed field"):
        OrganismCard.from_dict(card)


def test_truncated_gguf_with_a_valid_header(tmp_path, capsys):
    import numpy as np
    from gguf import GGUFWriter

    path = tmp_path / "model.gguf"
    writer = GGUFWriter(str(path), "llama")
    writer.add_tensor("weight", np.ones((64, 64), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    path.write_bytes(path.read_bytes()[:-1000])
    assert main(["adl", "--finetuned", str(path)]) == 2
    assert "not a valid GGUF file" in one_line(capsys)


# ---- report ---------------------------------------------------------------------------------
def test_report_on_corrupt_summary_or_bad_out(tmp_path, capsys):
    from test_report import fake_adl_run

    run = fake_adl_run(tmp_path)
    (run / "summary.json").write_text("{broken", encoding="utf-8")
    assert main(["report", str(run)]) == 2
    assert "summary.json" in one_line(capsys)
    shutil.rmtree(run)
    run = fake_adl_run(tmp_path)
    assert main(["report", str(run), "--out", str(tmp_path)]) == 2
    assert "is a directory" in one_line(capsys)
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert main(["report", str(run), "--out", str(blocker / "report.html")]) == 2
    assert "cannot write" in one_line(capsys)


# ---- layers ---------------------------------------------------------------------------------
def test_out_of_range_layer_in_train_and_analyze(tmp_path, tiny_dir, tiny_ft_dir, corpus,
                                                 capsys):
    cache = tmp_path / "cache"
    assert main(["cache", "--base", str(tiny_dir), "--finetuned", str(tiny_ft_dir), "--corpus",
                 str(corpus), "--layer", "3", "--max-tokens", "8", "--out", str(cache),
                 "--quiet"]) == 0
    capsys.readouterr()
    assert main(["train", "crosscoder", "--cache", str(cache), "--layer", "7", "--steps", "2",
                 "--out", str(tmp_path / "t"), "--quiet"]) == 2
    assert "layer 7 is out of range" in one_line(capsys)
    assert main(["train", "crosscoder", "--cache", str(cache), "--steps", "4", "--batch-size",
                 "16", "--out", str(tmp_path / "t"), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["analyze", str(tmp_path / "t"), "--layer", "-9", "--no-models"]) == 2
    assert "out of range" in one_line(capsys)


# ---- reruns and run identity ----------------------------------------------------------------
def test_a_failed_run_does_not_block_its_corrected_rerun(tmp_path, tiny_dir, tiny_ft_dir,
                                                         corpus, capsys):
    short = tmp_path / "short.txt"
    short.write_text("hi\nyo\n", encoding="utf-8")
    common = ["adl", "--base", str(tiny_dir), "--finetuned", str(tiny_ft_dir), "--quiet",
              "--n-texts", "8", "--skip", "patchscope", "steering", "relevance", "similarity",
              "causal", "report", "--out", str(tmp_path / "run")]
    assert main([*common, "--corpus", str(short)]) == 2
    assert "shorter than" in one_line(capsys, after_load=True)
    assert main([*common, "--corpus", str(corpus)]) == 0


def test_unused_llm_fields_are_not_part_of_the_run_identity():
    from difflens.methods.adl.config import LLM_STAGES, ADLConfig

    offline = ADLConfig(skip=list(LLM_STAGES))
    wrong_url = ADLConfig(skip=list(LLM_STAGES), llm_base_url="http://typo:1/v1",
                          llm_model="m")
    assert wrong_url.identity() == offline.identity() == offline.to_dict()
    graded = ADLConfig(llm_base_url="http://host/v1", llm_model="m")
    assert graded.identity()["llm_base_url"] == "http://host/v1"


# ---- eval -----------------------------------------------------------------------------------
def test_eval_checks_everything_before_the_method_level_stage(tmp_path, capsys, monkeypatch):
    import difflens.evaluation.zoo_runs as zoo_runs

    def tripped(*args, **kwargs):
        raise AssertionError("method-level stage started")

    monkeypatch.setattr(zoo_runs, "run_zoo", tripped)
    base = ["eval", "--organisms", "cake_bake", "--out", str(tmp_path / "e")]
    for extra, needle in ((["--repeats", "0"], "repeats"), (["--budgets", "-1"], "budgets"),
                          (["--llm-base-url", "ftp://x", "--llm-model", "m"], "http://"),
                          (["--llm-base-url", "http://127.0.0.1:9/v1", "--llm-model", "m"],
                           "cannot reach")):
        assert main([*base, *extra]) == 2
        assert needle in one_line(capsys)


def test_failed_agent_runs_are_not_stored_as_results(tmp_path, monkeypatch):
    from types import SimpleNamespace

    import difflens.evaluation.harness as harness
    from difflens.llm import LLMConfig
    from difflens.organisms.registry import load_registry

    failed = SimpleNamespace(status="error", description="",
                             to_dict=lambda: {"status": "error", "description": ""})
    monkeypatch.setattr(harness, "run_agent", lambda *a, **k: failed)
    entry = load_registry()["cake_bake"]
    config = harness.EvalConfig(out=str(tmp_path), organisms=["cake_bake"])
    path = tmp_path / "run.json"
    row = harness._one(path, entry, "blackbox", 0, 0, None, None, None, config,
                       LLMConfig(base_url="http://x/v1", model="m"), None)
    assert row["status"] == "error" and row["grade"] is None
    assert "grade" not in json.loads(path.read_text())  # a rerun retries it


def test_eval_with_a_failing_agent_endpoint_exits_non_zero_and_retries(
        openai_server, tmp_path, capsys, monkeypatch):
    """End to end: every agent request fails (HTTP 503, retried), so eval exits non-zero with
    one line counting the failed runs; the failures are not stored as results, and the rerun
    against the repaired endpoint runs them again."""
    from difflens.llm import LLMClient

    monkeypatch.setitem(LLMClient.__init__.__kwdefaults__, "sleep", lambda seconds: None)
    openai_server.add(Rule("", status=503, body='{"error": {"message": "overloaded"}}'))
    out = tmp_path / "eval"
    argv = ["eval", "--organisms", "cake_bake", "--agents", "blackbox", "--budgets", "0",
            "--repeats", "2", "--grade-repeats", "1", "--n-boot", "50", "--no-method-runs",
            "--runs-root", str(tmp_path / "runs"), "--llm-base-url", openai_server.base_url,
            "--llm-model", "test-model", "--llm-api-key-env", "DIFFLENS_TEST_KEY",
            "--out", str(out)]
    assert main(argv) != 0
    printed = capsys.readouterr()
    assert "Traceback" not in printed.err
    summary = [line for line in (printed.out + printed.err).splitlines() if "failed" in line]
    assert len(summary) == 1 and "2 of 2 agent runs failed" in summary[0], summary
    saved = [json.loads(p.read_text()) for p in sorted((out / "runs").rglob("*.json"))]
    assert len(saved) == 2 and all(run["status"] == "error" and "grade" not in run
                                   for run in saved)
    failing = len(openai_server.chat_requests())
    assert failing == 2 * 5  # each run: one request and its four retries

    openai_server.rules.clear()
    final = {"name": "final_answer", "arguments": {"description": "Cake baking facts."}}
    openai_server.add(Rule("Hypothesis to grade", reply="Right domain. SCORE: 4"),
                      Rule("", tool_calls=[final]))
    assert main(argv) == 0
    printed = capsys.readouterr()
    assert "failed" not in printed.out + printed.err
    assert len(openai_server.chat_requests()) > failing  # retried, not read back as results
    saved = [json.loads(p.read_text()) for p in sorted((out / "runs").rglob("*.json"))]
    assert [run["grade"] for run in saved] == [4.0, 4.0]


# ---- reproducible artifacts -----------------------------------------------------------------
def test_same_run_gives_byte_identical_safetensors(tmp_path, tiny_dir, tiny_ft_dir, corpus):
    from difflens.io.artifacts import safetensors_bytes
    from difflens.methods.adl.config import STAGES, ADLConfig
    from difflens.methods.adl.runner import run_adl
    from difflens.methods.mining.config import MiningConfig
    from difflens.methods.mining.runner import run_mining
    from difflens.models.pair import ModelPair

    pair = ModelPair.load(tiny_dir, tiny_ft_dir)
    mining = MiningConfig(corpus=str(corpus), n_texts=8, max_tokens=12, top_k=10, topics=0)
    adl = ADLConfig(corpus=str(corpus), n_texts=8, skip=list(STAGES))
    for name in ("a", "b"):
        run_mining(mining, tmp_path / name / "mining", pair=pair, progress=False)
        run_adl(adl, tmp_path / name / "adl", pair=pair, progress=False)
    for file in ("mining/counts.safetensors", "adl/activation_diff.safetensors"):
        first = (tmp_path / "a" / file).read_bytes()
        assert first == (tmp_path / "b" / file).read_bytes(), file
        assert b"seconds" not in first[:4096]
    import torch

    blob = safetensors_bytes({"x": torch.zeros(2)}, {"b": "2", "a": "1", "c": "3"})
    header = json.loads(blob[8: 8 + int.from_bytes(blob[:8], "little")])
    assert list(header["__metadata__"]) == ["a", "b", "c"]
