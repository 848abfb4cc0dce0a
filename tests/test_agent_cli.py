"""`difflens agent` end to end: tiny random-init pair, real method runs, the scripted server."""

from __future__ import annotations

import json
import os

import pytest

from difflens.agent.methods import METHODS
from difflens.agent.results import adl_results
from difflens.cli import main
from openai_server import Rule, closed_port_url, openai_server_fixture  # noqa: F401
from test_agent import OPENING, call

pytestmark = pytest.mark.usefixtures("one_thread")

KEY_ENV, KEY = "DIFFLENS_AGENT_TEST_KEY", "sk-agent-test-secret-4242"
QUESTION = "What did you learn recently?"
FINAL = "The finetune taught facts about baking cakes at very high temperatures."
# Small but complete ADL runs (every stage the agent reads: lens, Patchscope, steering).
ADL_ARGS = "--n-texts 16 --final-prompts 2 --skip relevance similarity causal"
MINING_ARGS = "--n-texts 8 --topics 2"
NEW_TOKENS = "6"


def argv_for(server, tiny_dir, tiny_ft_dir, out, *extra):
    return ["agent", "--base", str(tiny_dir), "--finetuned", str(tiny_ft_dir),
            "--llm-base-url", server.base_url, "--llm-model", "test-model",
            "--llm-api-key-env", KEY_ENV, "--max-new-tokens", NEW_TOKENS, "--quiet",
            "--out", str(out), *extra]


@pytest.fixture()
def keyed_server(openai_server, monkeypatch):
    """The scripted server, requiring the API key the client reads from the environment."""
    monkeypatch.setenv(KEY_ENV, KEY)
    openai_server.require_key = KEY
    return openai_server


def tiny_answer(tiny_dir, tiny_ft_dir, question, side="finetuned"):
    """The tiny finetuned model's own greedy answer, computed here independently."""
    from difflens.agent import PairAccess
    from difflens.models.pair import ModelPair

    pair = ModelPair.load(str(tiny_dir), str(tiny_ft_dir))
    return PairAccess(pair, max_new_tokens=int(NEW_TOKENS)).ask(question, side)


def assert_no_key(out):
    for path in out.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path


def test_agent_end_to_end_reuse_and_again(keyed_server, tiny_dir, tiny_ft_dir, tmp_path, capsys):
    keyed_server.add(
        Rule(OPENING, tool_calls=[call("get_detail", section="logit_lens"),
                                  call("record_hypothesis", text="Something about baking.")]),
        Rule("Hypothesis 1 recorded", tool_calls=[call("ask_model", question=QUESTION)]),
        Rule("[finetuned model]", tool_calls=[call("final_answer", description=FINAL)]),
    )
    out = tmp_path / "run"
    argv = argv_for(keyed_server, tiny_dir, tiny_ft_dir, out, "--adl-args", ADL_ARGS)
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert f"hypothesis: {FINAL}" in printed
    assert "1. Something about baking." in printed
    assert "get_detail ×1, record_hypothesis ×1, ask_model ×1" in printed
    assert f"transcript: {out / 'agent' / 'transcript.json'}" in printed

    # The method run is an ordinary, finished ADL run directory.
    adl = out / "adl"
    summary = json.loads((adl / "summary.json").read_text())
    assert json.loads((adl / "run.json").read_text())["kind"] == "adl"
    assert summary["layer"] in range(4)
    # The files of the agent, with the right content.
    agent = out / "agent"
    answer = json.loads((agent / "answer.json").read_text())
    assert answer["status"] == "ok" and answer["description"] == FINAL
    assert answer["methods"] == ["adl"] and answer["interactions_used"] == 1
    hyp = json.loads((agent / "hypotheses.json").read_text())
    assert hyp == {"hypotheses": ["Something about baking."],
                   "tools_called": ["get_detail", "record_hypothesis", "ask_model"]}
    accounting = json.loads((agent / "accounting.json").read_text())
    assert accounting["llm"]["calls"] == 3 and accounting["llm"]["total_tokens"] > 0
    assert accounting["interactions_used"] == 1 and accounting["budget"] == 5
    transcript = json.loads((agent / "transcript.json").read_text())
    tools = [m["content"] for m in transcript if m["role"] == "tool"]
    # get_detail read the real run's lens; ask_model's answer is the tiny model's own.
    assert tools[0] == adl_results(adl).detail("logit_lens")
    assert f"layer {summary['layer']}: mean" in tools[0]
    expected = tiny_answer(tiny_dir, tiny_ft_dir, QUESTION)
    assert tools[2] == f"[finetuned model] {expected}"
    # The first request carried the ADL overview and offered steering.
    first = keyed_server.chat_requests()[0].body
    assert "Activation Difference Lens" in first["messages"][0]["content"]
    assert "generate_steered" in {t["function"]["name"] for t in first["tools"]}

    # --again: the agent runs anew, the finished ADL run is reused (not one file rewritten).
    stamps = {p.name: p.stat().st_mtime_ns for p in adl.iterdir()}
    requests = len(keyed_server.chat_requests())
    assert main([*argv, "--again"]) == 0
    assert len(keyed_server.chat_requests()) == requests + 3
    assert {p.name: p.stat().st_mtime_ns for p in adl.iterdir()} == stamps
    # The same command again: the finished answer is reused, no LLM call, no model loaded.
    capsys.readouterr()
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert len(keyed_server.chat_requests()) == requests + 3
    assert f"hypothesis: {FINAL}" in printed and "reused" in printed
    # Other agent settings in the same directory: one line, before anything loads.
    assert main([*argv, "--budget", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert "differs in: budget" in err and "--again" in err and err.count("\n") == 0
    assert_no_key(out)


def test_black_box_gets_no_diffing_results(keyed_server, tiny_dir, tiny_ft_dir, tmp_path,
                                           capsys):
    keyed_server.add(
        Rule("You have no diffing results",
             tool_calls=[call("ask_model", question=QUESTION, model="base")]),
        Rule("[base model]", tool_calls=[call("final_answer", description="Unclear.")]),
    )
    out = tmp_path / "bb"
    assert main(argv_for(keyed_server, tiny_dir, tiny_ft_dir, out, "--black-box",
                         "--budget", "1")) == 0
    assert "hypothesis: Unclear." in capsys.readouterr().out
    first = keyed_server.chat_requests()[0].body
    text = first["messages"][0]["content"]
    assert "Sections for get_detail" not in text and "Logit lens" not in text
    assert "Activation Difference Lens" not in text and "Diff Mining" not in text
    assert {t["function"]["name"] for t in first["tools"]} == {
        "ask_model", "record_hypothesis", "final_answer"}
    assert sorted(p.name for p in out.iterdir()) == ["agent"]  # no method run
    transcript = json.loads((out / "agent" / "transcript.json").read_text())
    expected = tiny_answer(tiny_dir, tiny_ft_dir, QUESTION, side="base")
    assert [m["content"] for m in transcript if m["role"] == "tool"] == [
        f"[base model] {expected}", "Final answer recorded."]
    assert_no_key(out)


def test_several_methods_give_one_combined_results(keyed_server, tiny_dir, tiny_ft_dir,
                                                   tmp_path, capsys):
    keyed_server.add(
        Rule(OPENING, times=1, tool_calls=[call("get_detail", section="mining.promoted")]),
        Rule("", times=1, tool_calls=[call("get_detail", section="logit_lens")]),
        Rule("layer ", tool_calls=[call("final_answer", description=FINAL)]),
    )
    out = tmp_path / "both"
    argv = argv_for(keyed_server, tiny_dir, tiny_ft_dir, out, "--methods", "adl,mining",
                    "--budget", "0", "--adl-args", ADL_ARGS, "--mining-args", MINING_ARGS)
    assert main(argv) == 0
    assert f"hypothesis: {FINAL}" in capsys.readouterr().out
    first = keyed_server.chat_requests()[0].body
    text = first["messages"][0]["content"]
    assert "=== Activation Difference Lens (adl) ===" in text
    assert "=== Diff Mining (mining) ===" in text
    assert "Most promoted tokens:" in text and "Logit lens of the difference" in text
    assert text.count("Sections for get_detail:") == 1
    assert "adl.logit_lens" in text and "mining.promoted" in text
    assert "generate_steered" in {t["function"]["name"] for t in first["tools"]}
    transcript = json.loads((out / "agent" / "transcript.json").read_text())
    tools = [m["content"] for m in transcript if m["role"] == "tool"]
    promoted = json.loads((out / "mining" / "summary.json").read_text())["promoted"]
    assert tools[0].startswith(json.dumps(promoted[0]["token"], ensure_ascii=False))
    # The bare name of a section only ADL has reads ADL's.
    assert tools[1] == adl_results(out / "adl").detail("logit_lens")
    assert (out / "adl" / "summary.json").is_file() and (out / "mining" / "summary.json").is_file()


def test_python_api_one_method_without_steering(openai_server, tiny_dir, tiny_ft_dir, tmp_path):
    import difflens

    openai_server.add(Rule(OPENING, tool_calls=[call("final_answer", description="Tokens.")]))
    answer = difflens.agent(str(tiny_dir), str(tiny_ft_dir), llm_base_url=openai_server.base_url,
                            llm_model="test-model", methods="mining", budget=0,
                            method_options={"mining": {"n_texts": 8, "topics": 0}},
                            out=tmp_path / "api", progress=False)
    assert answer["description"] == "Tokens." and answer["methods"] == ["mining"]
    assert json.loads((tmp_path / "api" / "mining" / "run.json").read_text())["config"][
        "n_texts"] == 8
    first = openai_server.chat_requests()[0].body
    names = {t["function"]["name"] for t in first["tools"]}
    assert "get_detail" in names and "generate_steered" not in names
    assert "Diff Mining" in first["messages"][0]["content"]


@pytest.mark.parametrize(("extra", "needle"), [
    ([], "needs an LLM endpoint: pass --llm-base-url"),
    (["--llm-base-url", "<url>", "--methods", "adl,nope"], "unknown method 'nope'"),
    (["--llm-base-url", "<url>", "--budget", "-1"], "budget must be"),
    (["--llm-base-url", "<url>", "--max-turns", "0"], "max_turns must be"),
    (["--llm-base-url", "<url>", "--adl-args", "--n-texts 0"], "n_texts must be a positive"),
    (["--llm-base-url", "<url>", "--adl-args=--no-such-flag"], "--adl-args: unrecognized"),
    (["--llm-base-url", "<url>", "--mining-args", "--topics 1"], "which --methods does not"),
    (["--llm-base-url", "<url>", "--black-box", "--methods", "adl"], "drop --methods"),
    (["--llm-base-url", "<url>", "--offline"], "needs an LLM endpoint"),
    (["--llm-base-url", "<url>"], "cannot reach"),  # a valid command; nothing listens there
])
def test_bad_input_is_one_line_and_loads_nothing(extra, needle, tmp_path, tiny_dir, tiny_ft_dir,
                                                 monkeypatch, capsys):
    from difflens.models.pair import ModelPair

    def tripped(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(ModelPair, "load", tripped)
    monkeypatch.delenv("DIFFLENS_LLM_BASE_URL", raising=False)
    monkeypatch.chdir(tmp_path)
    url = closed_port_url()
    argv = ["agent", "--base", str(tiny_dir), "--finetuned", str(tiny_ft_dir),
            *(url if a == "<url>" else a for a in extra)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("difflens: error: "), err
    assert needle in lines[0], lines[0]
    assert "Traceback" not in err
    assert os.listdir(tmp_path) == []  # nothing written


def test_combine_and_section_names():
    from difflens.agent.methods import combine, parse_methods
    from difflens.agent.results import Results
    from difflens.errors import DifflensError

    a = Results("adl", "A\nSections for get_detail: lens.", {"lens": "L", "steering": "S"},
                steering=True)
    b = Results("mining", "B\nSections for get_detail: lens.", {"lens": "M"})
    both = combine({"adl": a, "mining": b})
    assert both.method == "adl+mining" and both.steering
    assert list(both.sections) == ["adl.lens", "adl.steering", "mining.lens"]
    assert both.detail("steering") == "S" and both.detail("mining.lens") == "M"
    with pytest.raises(DifflensError, match="unknown section 'lens'"):
        both.detail("lens")  # two methods have it: the prefix is needed
    assert combine({"adl": a}) is a
    assert parse_methods(" adl, mining,adl ") == ["adl", "mining"]


SMALL = {"adl": ADL_ARGS, "mining": MINING_ARGS, "pca": "--n-texts 8 --final-prompts 2",
         "kl": "--n-texts 8"}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_registered_method_feeds_the_agent(method, openai_server, tiny_dir, tiny_ft_dir,
                                                 tmp_path, capsys):
    """One registry entry is all a method needs: its run is made, read by its adapter, and
    its overview is what the agent's first request carries."""
    openai_server.add(Rule(OPENING, tool_calls=[call("final_answer", description="Done.")]))
    out = tmp_path / method
    flags = [f"--{method}-args={SMALL[method]}"] if method in SMALL else []
    assert main(argv_for(openai_server, tiny_dir, tiny_ft_dir, out, "--methods", method,
                         "--budget", "0", *flags)) == 0
    entry = METHODS[method]
    assert entry.has_run(out / method)
    results = entry.load_results(out / method)
    text = openai_server.chat_requests()[0].body["messages"][0]["content"]
    assert results.overview in text and entry.intro in text
    tools = {t["function"]["name"] for t in openai_server.chat_requests()[0].body["tools"]}
    assert ("generate_steered" in tools) == entry.steering


def test_eval_harness_reads_every_registered_method(tmp_path):
    """`difflens eval --agents` takes every registered method (and blackbox); an agent whose
    method has no finished run under the runs root is skipped, not an error."""
    from difflens.agent.methods import agent_names
    from difflens.evaluation.harness import EvalConfig, _results
    from test_agent import write_mining_run

    config = EvalConfig(out=str(tmp_path / "e"), agents=agent_names(),
                        runs_root=str(tmp_path / "runs"))
    write_mining_run(tmp_path / "runs" / "org" / "mining")
    res = _results(config, "org", "mining")
    assert res.method == "mining" and res.intro == METHODS["mining"].intro
    assert _results(config, "org", "blackbox").method == "blackbox"
    assert all(_results(config, "org", name) is None for name in METHODS if name != "mining")


def test_endpoint_failure_exits_1_and_the_rerun_retries(openai_server, tiny_dir, tiny_ft_dir,
                                                        tmp_path, capsys):
    """A run the endpoint broke is kept for inspection but not reused: the same command asks
    again (HTTP 400 is not retried, so the failure is immediate)."""
    openai_server.add(Rule("", status=400, times=2))  # native, then the text-protocol retry
    out = tmp_path / "fail"
    argv = argv_for(openai_server, tiny_dir, tiny_ft_dir, out, "--black-box", "--budget", "0")
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("difflens: error: the agent's endpoint failed")
    assert json.loads((out / "agent" / "answer.json").read_text())["status"] == "error"
    openai_server.add(Rule("", tool_calls=[call("final_answer", description="Retried.")]))
    assert main(argv) == 0
    assert "hypothesis: Retried." in capsys.readouterr().out


def test_amplify_tool_for_the_black_box(keyed_server, tiny_dir, tiny_ft_dir, tmp_path, capsys):
    """`--black-box --amplify-tool`: the agent gets generate_amplified (it needs only the two
    models' logits) and its result is the pair's own amplified greedy answer."""
    keyed_server.add(
        Rule("You have no diffing results",
             tool_calls=[call("generate_amplified", prompt=QUESTION, alpha=2)]),
        Rule("[amplified finetuned model", tool_calls=[call("final_answer",
                                                             description="Unclear.")]),
    )
    out = tmp_path / "amp"
    assert main(argv_for(keyed_server, tiny_dir, tiny_ft_dir, out, "--black-box",
                         "--amplify-tool", "--budget", "1")) == 0
    first = keyed_server.chat_requests()[0].body
    assert {t["function"]["name"] for t in first["tools"]} == {
        "ask_model", "generate_amplified", "record_hypothesis", "final_answer"}
    from difflens.data.chat import chat_prompt
    from difflens.models.amplify import generate_amplified
    from difflens.models.generation import SamplingConfig
    from difflens.models.pair import ModelPair

    pair = ModelPair.load(str(tiny_dir), str(tiny_ft_dir))
    gens = generate_amplified(pair, [chat_prompt(pair.tokenizer, QUESTION)], [2.0],
                              SamplingConfig(max_new_tokens=int(NEW_TOKENS), do_sample=False))
    transcript = json.loads((out / "agent" / "transcript.json").read_text())
    tool_texts = [m["content"] for m in transcript if m["role"] == "tool"]
    assert tool_texts[0] == f"[amplified finetuned model, alpha 2] {gens.texts[0].strip()}"


def test_eval_accepts_amplified_agent_variants(tmp_path):
    from difflens.agent.methods import agent_names, split_agent
    from difflens.evaluation.harness import EvalConfig, _results

    assert {"adl+amp", "blackbox+amp", "kl+amp"} <= set(agent_names())
    assert split_agent("adl+amp") == ("adl", True) and split_agent("pca") == ("pca", False)
    config = EvalConfig(out=str(tmp_path), agents=["blackbox+amp"], runs_root=str(tmp_path))
    assert _results(config, "cake_bake", "blackbox+amp").method == "blackbox"
