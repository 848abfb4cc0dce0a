"""Budgets, accounting and API-key hygiene of the LLM client."""

from __future__ import annotations

import json
import logging

import pytest

from difflens.llm import BudgetExceeded, LLMCallError, LLMClient, LLMConfig
from openai_server import Rule, ScriptedOpenAIServer, openai_server_fixture  # noqa: F401 (fixture)

KEY_ENV = "DIFFLENS_TEST_SECRET_KEY"
SECRET = "sk-test-Zq8vK2mN4pR7sT1uW3xY5aB9cD0eF6gH"
HI = [{"role": "user", "content": "hi"}]  # estimated at ceil(2/4) + 4 = 5 prompt tokens


def make_client(server: ScriptedOpenAIServer, **overrides) -> LLMClient:
    fields = dict(
        base_url=server.base_url,
        model="test-model",
        api_key_env=KEY_ENV,
        max_retries=2,
        backoff_base=0.01,
        backoff_max=0.02,
    )
    fields.update(overrides)
    return LLMClient(LLMConfig(**fields))


def test_call_budget_refuses_exactly_the_call_over_budget(openai_server):
    openai_server.add(Rule("hi", reply="hello"))
    client = make_client(openai_server, max_calls=3)
    for _ in range(3):
        client.chat(HI)
    with pytest.raises(BudgetExceeded, match="3 of max_calls=3 used"):
        client.chat(HI)
    assert len(openai_server.chat_requests()) == 3  # the refused call was never sent
    usage = client.usage()
    assert (usage["calls"], usage["refused"], usage["max_calls"]) == (3, 1, 3)


def test_retries_count_against_the_call_budget(openai_server):
    openai_server.add(Rule("hi", status=500))
    client = make_client(openai_server, max_calls=2, max_retries=5)
    with pytest.raises(BudgetExceeded):
        client.chat(HI)
    assert len(openai_server.chat_requests()) == 2


def test_token_budget_reserves_estimate_plus_cap(openai_server):
    # Each request reserves 5 (prompt estimate) + 5 (cap) = 10 tokens and really uses 5 + 5.
    openai_server.add(Rule("hi", reply="hello", usage=(5, 5)))
    client = make_client(openai_server, max_tokens=40, max_completion_tokens=5)
    for _ in range(4):
        client.chat(HI)  # spent 10, 20, 30, 40: the 4th fits exactly
    with pytest.raises(BudgetExceeded, match="max_tokens=40"):
        client.chat(HI)
    assert len(openai_server.chat_requests()) == 4
    assert client.usage()["total_tokens"] == 40


def test_token_budget_refuses_a_request_whose_cap_does_not_fit(openai_server):
    client = make_client(openai_server, max_tokens=100)
    with pytest.raises(BudgetExceeded, match="~505 for this request > max_tokens=100"):
        client.chat(HI, max_completion_tokens=500)
    assert openai_server.chat_requests() == []


def test_concurrent_batch_never_exceeds_call_budget(openai_server):
    openai_server.add(Rule("n", reply="ok", delay=0.05))
    client = make_client(openai_server, max_calls=5, concurrency=4)
    conversations = [[{"role": "user", "content": f"n{i}"}] for i in range(12)]
    with pytest.raises(BudgetExceeded):
        client.chat_many(conversations)
    assert len(openai_server.chat_requests()) == 5


def test_accounting_is_json_with_calls_retries_tokens_failures(openai_server):
    openai_server.add(
        Rule("hi", status=429, times=1),
        Rule("hi", reply="hello", usage=(7, 3)),
        Rule("parse me", reply="garbage", usage=(4, 1), times=1),
        Rule("could not be parsed", reply="42", usage=(9, 1)),
    )
    client = make_client(openai_server)
    client.chat(HI)

    def number(text: str) -> int:
        return int(text)  # ValueError on "garbage" triggers the re-ask

    assert client.chat([{"role": "user", "content": "parse me"}], parse=number).parsed == 42
    usage = json.loads(json.dumps(client.usage()))
    assert usage == {
        "endpoint": openai_server.base_url,
        "model": "test-model",
        "calls": 4,
        "retries": 1,
        "reasks": 1,
        "failures": 1,
        "refused": 0,
        "prompt_tokens": 7 + 4 + 9,
        "completion_tokens": 3 + 1 + 1,
        "total_tokens": 25,
        "max_calls": None,
        "max_tokens": None,
    }


def test_key_is_read_at_call_time_and_never_leaks(openai_server, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv(KEY_ENV, SECRET)
    openai_server.add(
        Rule("first", reply="ok"),
        # Like OpenAI, echo the rejected key in the error body.
        Rule("second", status=401, body=json.dumps({"error": {"message": f"bad key {SECRET}"}})),
        Rule("third", status=500, body=json.dumps({"error": {"message": f"oops {SECRET[:20]}"}})),
    )
    client = make_client(openai_server, max_retries=1)
    client.chat([{"role": "user", "content": "first"}])
    assert openai_server.chat_requests()[0].headers["authorization"] == f"Bearer {SECRET}"

    errors = []
    for prompt in ("second", "third"):
        with pytest.raises(LLMCallError) as info:
            client.chat([{"role": "user", "content": prompt}])
        errors.append(info.value)
    assert "$DIFFLENS_TEST_SECRET_KEY was rejected" in str(errors[0])

    # A new key in the environment is used by the next call (read at call time).
    monkeypatch.setenv(KEY_ENV, "sk-rotated")
    client.chat([{"role": "user", "content": "first"}])
    assert openai_server.chat_requests()[-1].headers["authorization"] == "Bearer sk-rotated"

    exposed = [
        json.dumps(client.usage()),
        json.dumps(client.config.to_dict()),
        repr(client.config),
        str(client.config),
        repr(client),
        caplog.text,
        *(str(e) for e in errors),
        *(repr(e) for e in errors),
    ]
    # No chained openai exception (whose message may quote the key) rides along.
    assert all(e.__cause__ is None and e.__context__ is None for e in errors)
    for text in exposed:
        assert SECRET not in text and SECRET[:20] not in text
    assert "DIFFLENS_TEST_SECRET_KEY" in repr(client.config)  # only the variable's name


def test_missing_key_sends_no_authorization(openai_server, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    openai_server.add(Rule("hi", reply="hello"), Rule("nokey", status=401))
    client = make_client(openai_server)
    client.chat(HI)
    sent = openai_server.chat_requests()[0].headers.get("authorization", "")
    assert "sk-" not in sent  # only the openai package's inert placeholder, if anything
    with pytest.raises(LLMCallError, match=r"\$DIFFLENS_TEST_SECRET_KEY is not set"):
        client.chat([{"role": "user", "content": "nokey"}])
