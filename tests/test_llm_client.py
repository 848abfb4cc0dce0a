"""LLM client against the scripted OpenAI-compatible server: retries, timeouts, re-asks,
concurrency and tool calls."""

from __future__ import annotations

import time

import pytest

from difflens.llm import LLMCallError, LLMClient, LLMConfig, LLMParseError
from difflens.llm.retry import backoff_delay
from openai_server import Rule, ScriptedOpenAIServer, openai_server_fixture  # noqa: F401 (fixture)

USER = [{"role": "user", "content": "What is the capital of France?"}]


def make_client(server: ScriptedOpenAIServer, **overrides) -> LLMClient:
    fields = dict(
        base_url=server.base_url,
        model="test-model",
        api_key_env="DIFFLENS_TEST_KEY",
        timeout=5.0,
        max_retries=3,
        backoff_base=0.01,
        backoff_max=0.05,
        jitter=0.1,
    )
    fields.update(overrides)
    return LLMClient(LLMConfig(**fields))


def yes_no(text: str) -> bool:
    """A strict parser like the graders use: 'ANSWER: yes' or 'ANSWER: no'."""
    word = text.strip().upper().removeprefix("ANSWER:").strip()
    if word not in ("YES", "NO"):
        raise ValueError(f"expected 'ANSWER: yes' or 'ANSWER: no', got {text!r}")
    return word == "YES"


def test_chat_returns_text_usage_and_sends_model(openai_server):
    openai_server.add(Rule("capital of France", reply="Paris", usage=(12, 1)))
    client = make_client(openai_server)
    result = client.chat(USER)
    assert result.text == "Paris"
    assert (result.prompt_tokens, result.completion_tokens, result.attempts) == (12, 1, 1)
    (request,) = openai_server.chat_requests()
    assert request.body["model"] == "test-model"
    assert request.body["messages"] == USER
    assert request.body["max_tokens"] == 1024
    assert "temperature" not in request.body  # omitted unless asked: some models reject it


def test_retries_on_429_and_500_then_succeeds(openai_server):
    openai_server.add(
        Rule("capital", status=429, times=1, headers={"Retry-After": "0"}),
        Rule("capital", status=500, times=1),
        Rule("capital", status=503, times=1),
        Rule("capital", reply="Paris", usage=(10, 2)),
    )
    client = make_client(openai_server)
    result = client.chat(USER)
    assert result.text == "Paris"
    assert result.attempts == 4
    assert len(openai_server.chat_requests()) == 4
    usage = client.usage()
    assert (usage["calls"], usage["retries"], usage["failures"]) == (4, 3, 3)
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (10, 2)


def test_persistent_500_gives_clear_error_after_retries(openai_server):
    openai_server.add(Rule("capital", status=500, body='{"error": {"message": "GPU on fire"}}'))
    client = make_client(openai_server, max_retries=2)
    with pytest.raises(LLMCallError) as info:
        client.chat(USER)
    message = str(info.value)
    assert "HTTP 500 after 3 attempts" in message and "GPU on fire" in message
    assert "\n" not in message
    assert len(openai_server.chat_requests()) == 3


def test_client_errors_are_not_retried(openai_server):
    openai_server.add(Rule("capital", status=404, body='{"error": {"message": "no such model"}}'))
    client = make_client(openai_server)
    with pytest.raises(LLMCallError, match=r"HTTP 404.*--llm-model"):
        client.chat(USER)
    assert len(openai_server.chat_requests()) == 1


def test_timeout_retried_then_succeeds(openai_server):
    openai_server.add(Rule("capital", delay=2.0, times=1), Rule("capital", reply="Paris"))
    client = make_client(openai_server, timeout=0.3)
    assert client.chat(USER).text == "Paris"
    assert client.usage()["retries"] == 1


def test_timeout_retried_then_clear_error(openai_server):
    openai_server.add(Rule("capital", delay=3.0))
    client = make_client(openai_server, timeout=0.3, max_retries=1)
    start = time.monotonic()
    with pytest.raises(LLMCallError) as info:
        client.chat(USER)
    assert time.monotonic() - start < 2.5
    assert "did not answer within 0.3 s (2 attempts)" in str(info.value)
    assert "--llm-timeout" in str(info.value)
    assert len(openai_server.chat_requests()) == 2


def test_malformed_http_body_is_retried(openai_server):
    openai_server.add(
        Rule("capital", body="this is not json", times=1), Rule("capital", reply="Paris")
    )
    client = make_client(openai_server)
    assert client.chat(USER).text == "Paris"
    assert client.usage()["failures"] == 1


def test_malformed_answer_is_reasked_then_parsed(openai_server):
    openai_server.add(
        Rule("Is Paris in France?", reply="Well, it depends on how you look at it."),
        Rule("could not be parsed", reply="ANSWER: yes"),
    )
    client = make_client(openai_server)
    result = client.chat([{"role": "user", "content": "Is Paris in France?"}], parse=yes_no)
    assert result.parsed is True and result.attempts == 2
    reask = openai_server.chat_requests()[1].body["messages"]
    # The re-ask shows the model its own answer and what was wrong with it.
    assert reask[1] == {"role": "assistant", "content": "Well, it depends on how you look at it."}
    assert "expected 'ANSWER: yes'" in reask[2]["content"]
    assert client.usage()["reasks"] == 1


def test_malformed_answer_gives_clear_error_after_reasks(openai_server):
    openai_server.add(Rule("", reply="I refuse to use your format"))
    client = make_client(openai_server, max_parse_retries=2)
    with pytest.raises(LLMParseError) as info:
        client.chat(USER, parse=yes_no)
    message = str(info.value)
    assert "could not be parsed after 3 attempts" in message
    assert "I refuse to use your format" in message and "\n" not in message
    assert len(openai_server.chat_requests()) == 3


def test_answer_cut_at_the_cap_says_so(openai_server):
    openai_server.add(Rule("", reply="", finish_reason="length"))
    client = make_client(openai_server, max_parse_retries=0)
    with pytest.raises(LLMParseError, match="cut at max_completion_tokens=1024: raise it"):
        client.chat(USER, parse=yes_no)


def test_concurrency_is_bounded_and_order_kept(openai_server):
    openai_server.add(
        Rule("item", reply=lambda body: body["messages"][-1]["content"].upper(), delay=0.15)
    )
    client = make_client(openai_server, concurrency=3)
    conversations = [[{"role": "user", "content": f"item {i}"}] for i in range(9)]
    start = time.monotonic()
    results = client.chat_many(conversations)
    elapsed = time.monotonic() - start
    assert [r.text for r in results] == [f"ITEM {i}" for i in range(9)]
    assert openai_server.max_in_flight == 3
    assert elapsed < 9 * 0.15  # really parallel


def test_batch_stops_on_first_error(openai_server):
    openai_server.add(Rule("bad", status=400), Rule("good", reply="ok", delay=0.05))
    client = make_client(openai_server, concurrency=2)
    conversations = [[{"role": "user", "content": "bad"}]] + [
        [{"role": "user", "content": f"good {i}"}] for i in range(20)
    ]
    with pytest.raises(LLMCallError, match="refused the request with HTTP 400"):
        client.chat_many(conversations)
    assert len(openai_server.chat_requests()) < 21  # the rest was cancelled


def test_tool_calls_round_trip(openai_server):
    tools = [
        {
            "type": "function",
            "function": {
                "name": "ask_finetuned_model",
                "description": "Ask the finetuned model a question.",
                "parameters": {
                    "type": "object",
                    "properties": {"question": {"type": "string"}},
                    "required": ["question"],
                },
            },
        }
    ]
    openai_server.add(
        Rule(
            "Investigate",
            tool_calls=[{"name": "ask_finetuned_model", "arguments": {"question": "Hi?"}}],
        ),
        Rule("I love baking", reply="The model likes cakes."),
    )
    client = make_client(openai_server)
    messages = [{"role": "user", "content": "Investigate the model."}]
    first = client.chat(messages, tools=tools, tool_choice="auto")
    assert first.finish_reason == "tool_calls" and first.text == ""
    (call,) = first.tool_calls
    assert call.name == "ask_finetuned_model"
    assert call.parsed_arguments() == {"question": "Hi?"}
    sent = openai_server.chat_requests()[0].body
    assert sent["tools"] == tools and sent["tool_choice"] == "auto"
    # Continue the conversation with the tool's result, as an agent loop would.
    messages += [
        first.message(),
        {"role": "tool", "tool_call_id": call.id, "content": "I love baking cakes!"},
    ]
    second = client.chat(messages, tools=tools)
    assert second.text == "The model likes cakes."
    echoed = openai_server.chat_requests()[1].body["messages"]
    assert echoed[1]["tool_calls"][0]["function"]["name"] == "ask_finetuned_model"
    assert echoed[2]["role"] == "tool"


def test_switches_to_max_completion_tokens_when_endpoint_asks(openai_server):
    body = (
        '{"error": {"message": "Unsupported parameter: \'max_tokens\' is not supported with '
        "this model. Use 'max_completion_tokens' instead.\"}}"
    )
    openai_server.add(
        Rule("capital", status=400, body=body, times=1), Rule("capital", reply="Paris")
    )
    client = make_client(openai_server)
    assert client.chat(USER, max_completion_tokens=77).text == "Paris"
    second = openai_server.chat_requests()[1].body
    assert second["max_completion_tokens"] == 77 and "max_tokens" not in second


def test_unscripted_prompt_fails_loudly():
    with ScriptedOpenAIServer([Rule("known", reply="ok")]) as server:
        client = make_client(server, max_retries=0)
        with pytest.raises(LLMCallError, match="no rule for prompt"):
            client.chat([{"role": "user", "content": "something else"}])
        assert server.unknown == ["something else"]
        with pytest.raises(AssertionError, match="no rule matches"):
            server.assert_all_known()


def test_backoff_delay_is_exponential_capped_and_jittered():
    assert [backoff_delay(i, 0.5, 4.0, 0.0) for i in range(5)] == [0.5, 1.0, 2.0, 4.0, 4.0]
    assert backoff_delay(0, 0.5, 4.0, 0.0, retry_after=3.0) == 3.0
    assert backoff_delay(0, 0.5, 4.0, 0.0, retry_after=999.0) == 4.0
    jittered = [backoff_delay(1, 0.5, 4.0, 0.25) for _ in range(50)]
    assert all(1.0 <= d <= 1.25 for d in jittered) and len(set(jittered)) > 1
