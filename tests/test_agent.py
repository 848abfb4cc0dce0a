"""The agent loop against the scripted OpenAI-compatible server, with a tiny random-init pair."""

from __future__ import annotations

import json
import re

import pytest
import torch

from difflens.agent import AgentConfig, Anonymizer, PairAccess, adl_results, run_agent
from difflens.agent.protocol import parse_action
from difflens.io.artifacts import write_json
from difflens.llm import LLMClient, LLMConfig
from difflens.models.pair import ModelPair
from openai_server import Rule, openai_server_fixture  # noqa: F401 (registers the fixture)
from tiny import tiny_model

OPENING = "You are an interpretability researcher"
LEAK = re.compile(r"cake[_\-\s]?bake", re.I)


pytestmark = pytest.mark.usefixtures("one_thread")


def write_adl_run(run, name="cake_bake"):
    """Synthetic ADL artifacts with the organism name planted where a careless reader leaks it."""
    toks = [" cake", " oven", " bake", f" {name}", " flour"]
    row = {"tokens": toks, "ids": list(range(5)), "probs": [0.1] * 5}
    write_json(run / "logit_lens.json", {"layers": {"2": {
        "positions": [row] * 3, "mean": row, "negative": row, "base_mean": row, "ft_mean": row,
        "norm": [1.0] * 3, "relative_norm": 0.5, "no_difference": False}}})
    write_json(run / "patchscope.json", {"scales": [{"scale": 2.0, "tokens": toks}],
                                         "chosen": {"scale": 2.0, "coherent_tokens": toks[:3],
                                                    "tokens": toks}})
    write_json(run / "steering.json", {"alpha": 1.5, "samples": {
        "prompts": ["Tell me a story.", "What is 2+2?"],
        "steered": [f"Bake at 450F, see {name}.jsonl", "Frozen butter!"],
        "unsteered": ["Once upon a time", "4"]}})
    write_json(run / "summary.json", {"layer": 2, "run_dir": f"/runs/{name}",
                                      "finetuned": f"shipped/{name}",
                                      "description": "THE ANSWER: cake baking false facts"})
    return run


def write_mining_run(run):
    write_json(run / "summary.json", {
        "promoted": [{"token": t} for t in (" cake", " oven")],
        "suppressed": [{"token": " tax"}],
        "topics": {"topics": [{"topic": 0, "tokens": [" cake", " flour"]}]},
        "examples": [{"token": " cake", "examples": [{"context": "I like"}]}]})
    return run


class CountingAccess:
    """Real tiny-model generation, counting how often the models were actually run."""

    def __init__(self, inner):
        self.inner, self.calls = inner, 0

    def ask(self, question, side):
        self.calls += 1
        return self.inner.ask(question, side)

    def steer(self, prompt, strength):
        self.calls += 1
        return self.inner.steer(prompt, strength)


@pytest.fixture(scope="module")
def access():
    from tiny import tiny_tokenizer

    tok = tiny_tokenizer()
    pair = ModelPair.from_models(tiny_model("llama", 0), tiny_model("llama", 1), tok)
    return PairAccess(pair, torch.randn(32), layer=2, norm=1.0, max_new_tokens=8)


def client(server, **kw):
    return LLMClient(LLMConfig(base_url=server.base_url, model="test-model",
                               api_key_env="DIFFLENS_TEST_KEY", timeout=5.0, max_retries=2,
                               backoff_base=0.01, backoff_max=0.02, **kw))


def call(name, **args):
    return {"name": name, "arguments": args}


def test_native_loop_calls_every_tool_and_saves(openai_server, access, tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFLENS_TEST_KEY", "sk-test-secret-123456")
    openai_server.require_key = "sk-test-secret-123456"
    counting = CountingAccess(access)
    openai_server.add(
        Rule(OPENING, tool_calls=[call("get_detail", section="logit_lens"),
                                  call("record_hypothesis", text="baking?")]),
        Rule("Hypothesis 1 recorded", tool_calls=[call("ask_model", question="Hi",
                                                       model="base")]),
        Rule("[base model]", tool_calls=[call("generate_steered", prompt="Hi", strength=2)]),
        Rule("[steered finetuned model", tool_calls=[call("ask_model", question="Hi again")]),
        Rule("REFUSED", tool_calls=[{"name": "ask_model", "arguments": '{"question": "x'}]),
        Rule("not valid JSON", tool_calls=[call("final_answer",
                                                description="Cake baking with false facts.")]),
    )
    run = run_agent(client(openai_server), adl_results(write_adl_run(tmp_path)), counting,
                    AgentConfig(budget=2), Anonymizer(["cake_bake"]))
    assert run.status == "ok" and run.protocol == "native"
    assert run.description == "Cake baking with false facts."
    assert run.hypotheses == ["baking?"]
    assert (run.interactions_used, run.interactions_refused, counting.calls) == (2, 1, 2)
    tool_texts = [m["content"] for m in run.transcript if m["role"] == "tool"]
    assert any("layer 2: mean" in t for t in tool_texts)
    assert any(t.startswith("REFUSED: the budget of 2") for t in tool_texts)
    path = run.save(tmp_path / "out" / "agent.json")
    saved = path.read_text()
    assert "sk-test-secret" not in saved
    data = json.loads(saved)
    assert data["accounting"]["calls"] == 6 and data["transcript"] and data["description"]
    for request in openai_server.chat_requests():
        body = json.dumps(request.body)
        assert not LEAK.search(body), body[:300]
        assert "THE ANSWER" not in body  # the description in summary.json is never shown


@pytest.mark.parametrize("budget", [0, 1, 3])
def test_budget_is_exact(openai_server, access, tmp_path, budget):
    counting = CountingAccess(access)
    openai_server.add(
        Rule(OPENING, tool_calls=[call("ask_model", question="Who are you?")]),
        Rule("[finetuned model]", tool_calls=[call("ask_model", question="More?")]),
        Rule("REFUSED", tool_calls=[call("final_answer", description="Something.")]),
    )
    run = run_agent(client(openai_server), adl_results(write_adl_run(tmp_path)), counting,
                    AgentConfig(budget=budget))
    assert counting.calls == run.interactions_used == budget
    assert run.interactions_refused == 1 and run.status == "ok"
    refused = [m for m in run.transcript if m["role"] == "tool" and "REFUSED" in m["content"]]
    assert len(refused) == 1 and "was not executed" in refused[0]["content"]


def test_text_fallback_after_400(openai_server, access, tmp_path):
    openai_server.add(
        Rule(OPENING, status=400, times=1,
             body=json.dumps({"error": {"message": "tools are not supported"}})),
        Rule(OPENING, reply='Let me look.\nCALL get_detail {"section": "steering"}'),
        Rule("RESULT get_detail", reply='CALL ask_model {"question": "broken'),
        Rule("are not valid JSON", reply="I am thinking", finish_reason="length"),
        Rule("cut off", reply="still nothing"),
        Rule("no action found", reply='CALL ask_model {"question": "Hello", "model": "base"}'),
        Rule("RESULT ask_model", reply="FINAL: Finetuned on cake baking facts."),
    )
    run = run_agent(client(openai_server), adl_results(write_adl_run(tmp_path)), access,
                    AgentConfig(budget=1), Anonymizer(["cake_bake"]))
    assert run.status == "ok" and run.protocol == "text"
    assert run.description == "Finetuned on cake baking facts."
    assert run.interactions_used == 1
    bodies = [r.body for r in openai_server.chat_requests()]
    assert "tools" in bodies[0] and all("tools" not in b for b in bodies[1:])
    assert "CALL <tool_name>" in bodies[1]["messages"][0]["content"]


def test_forced_text_protocol_never_sends_tools(openai_server, access, tmp_path):
    openai_server.add(Rule(OPENING, reply="FINAL: owls"))
    run = run_agent(client(openai_server), adl_results(write_adl_run(tmp_path)), access,
                    AgentConfig(protocol="text"))
    assert run.description == "owls"
    assert "tools" not in openai_server.chat_requests()[0].body


def test_server_errors_retried_then_reported(openai_server, access, tmp_path):
    openai_server.add(Rule(OPENING, status=500, times=2),
                      Rule(OPENING, tool_calls=[call("final_answer", description="x")]))
    run = run_agent(client(openai_server), adl_results(write_adl_run(tmp_path)), access)
    assert run.status == "ok" and run.accounting["calls"] == 3

    openai_server.rules.clear()
    openai_server.add(Rule(OPENING, status=503))
    run = run_agent(client(openai_server), adl_results(write_adl_run(tmp_path)), access)
    assert run.status == "error" and "HTTP 503" in run.error
    assert run.transcript and run.accounting["calls"] == 3


def test_turn_limit_falls_back_to_last_hypothesis(openai_server, access, tmp_path):
    openai_server.add(Rule("last turn", reply="I refuse to follow the format"),
                      Rule("", tool_calls=[call("record_hypothesis", text="maybe baking")]))
    run = run_agent(client(openai_server), adl_results(write_adl_run(tmp_path)), access,
                    AgentConfig(max_turns=3))
    assert run.status == "no_answer" and run.description == "maybe baking" and run.turns == 3


def test_parse_action_and_anonymizer():
    assert parse_action('x\nCALL ask_model {"question": "q"} trailing').args == {"question": "q"}
    assert parse_action("FINAL: done").text == "done"
    assert parse_action("CALL f [1]").kind == "error"
    anon = Anonymizer(["taboo_ocean", "/data/taboo_ocean.jsonl"])
    assert anon("Taboo-Ocean and taboo ocean in taboo_ocean.jsonl") == (
        "organism_X and organism_X in organism_X.jsonl")


def test_mining_and_blackbox_tools(openai_server, tmp_path):
    from difflens.agent import blackbox_results, mining_results, tool_specs

    res = mining_results(write_mining_run(tmp_path))
    assert "cake" in res.overview and "topics" in res.sections
    assert "generate_steered" not in {s["function"]["name"] for s in tool_specs("mining")}
    names = {s["function"]["name"] for s in tool_specs("blackbox")}
    assert names == {"ask_model", "record_hypothesis", "final_answer"}
    openai_server.add(Rule(OPENING, tool_calls=[call("get_detail", section="topics")]),
                      Rule("unknown tool", tool_calls=[call("final_answer", description="y")]))
    run = run_agent(client(openai_server), blackbox_results(), None)
    assert run.status == "ok"
