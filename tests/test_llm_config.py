"""LLMConfig, environment configuration, lazy imports and fail-fast reachability."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from difflens.errors import DifflensError
from difflens.llm import LLMCallError, LLMClient, LLMConfig
from openai_server import closed_port_url, openai_server_fixture  # noqa: F401 (fixture)

SRC = str(Path(__file__).resolve().parents[1] / "src")


def test_from_env_reads_the_three_variables():
    env = {
        "DIFFLENS_LLM_BASE_URL": "http://localhost:11434/v1",
        "DIFFLENS_LLM_MODEL": "qwen2.5:7b",
        "DIFFLENS_LLM_API_KEY_ENV": "OLLAMA_KEY",
    }
    config = LLMConfig.from_env(env, max_calls=50)
    assert (config.base_url, config.model, config.api_key_env) == (
        "http://localhost:11434/v1",
        "qwen2.5:7b",
        "OLLAMA_KEY",
    )
    assert config.max_calls == 50
    assert LLMConfig.from_env({}) is None  # nothing configured: callers fall back to offline
    only_model = LLMConfig.from_env({"DIFFLENS_LLM_MODEL": "gpt-4o-mini"})
    assert only_model.base_url == "https://api.openai.com/v1"
    assert only_model.api_key_env == "OPENAI_API_KEY"


def test_config_round_trips_through_json():
    config = LLMConfig(base_url="http://h:1/v1", model="m", max_tokens=1000, concurrency=2)
    assert LLMConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"base_url": "localhost:8000"}, "must start with http"),
        ({"timeout": 0}, "timeout must be > 0"),
        ({"concurrency": 0}, "concurrency must be > 0"),
        ({"max_calls": -1}, "max_calls must be >= 0"),
        ({"max_retries": -1}, "max_retries must be >= 0"),
    ],
)
def test_config_validation_gives_one_line_errors(fields, message):
    with pytest.raises(DifflensError, match=message):
        LLMConfig(**fields)


def test_a_key_pasted_as_api_key_env_is_rejected_without_echo():
    pasted = "sk-proj-abcdef1234567890"
    with pytest.raises(DifflensError) as info:
        LLMConfig(api_key_env=pasted)
    assert pasted not in str(info.value) and "NAME of an environment variable" in str(info.value)


def test_credentials_in_base_url_are_not_printed():
    config = LLMConfig(base_url="https://user:hunter2@proxy.example/v1")
    assert "hunter2" not in repr(config) and "hunter2" not in json.dumps(config.to_dict())
    assert "hunter2" not in repr(LLMClient(config))


def heavy_modules_after(statement: str) -> str:
    """Run ``statement`` in a fresh interpreter; print which heavy packages it imported."""
    code = (f"import sys; {statement}; "
            "heavy = [m for m in ('openai', 'torch', 'sentence_transformers', 'transformers') "
            "if m in sys.modules]; print(heavy)")
    env = {**os.environ, "PYTHONPATH": SRC}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_importing_llm_and_graders_stays_light():
    assert heavy_modules_after("import difflens.llm, difflens.graders") == "[]"


def test_unreachable_endpoint_fails_fast_with_one_line():
    url = closed_port_url()
    client = LLMClient(LLMConfig(base_url=url, model="m", timeout=30.0))
    import openai  # noqa: F401  (a cold import takes seconds on a loaded machine: not timed)

    start = time.monotonic()
    with pytest.raises(DifflensError) as info:
        client.check_reachable()
    assert time.monotonic() - start < 5.0
    message = str(info.value)
    assert message.startswith(f"cannot reach LLM endpoint {url}: ")
    assert message.endswith("; check --llm-base-url or use offline grading")
    assert "\n" not in message


def test_chat_on_unreachable_endpoint_gives_the_same_message_after_retries():
    url = closed_port_url()
    config = LLMConfig(base_url=url, model="m", max_retries=2, backoff_base=0.01, backoff_max=0.02)
    client = LLMClient(config)
    start = time.monotonic()
    with pytest.raises(LLMCallError, match=f"^cannot reach LLM endpoint {url}: "):
        client.chat([{"role": "user", "content": "hi"}])
    assert time.monotonic() - start < 5.0
    assert client.usage()["calls"] == 3 and client.usage()["failures"] == 3


def test_check_reachable_accepts_a_live_server_and_reports_bad_keys(openai_server, monkeypatch):
    client = LLMClient(LLMConfig(base_url=openai_server.base_url, model="test-model"))
    client.check_reachable()
    assert openai_server.requests[-1].path == "/v1/models"
    assert client.usage()["calls"] == 0  # probes are not budgeted calls

    # 404 on /models (llama.cpp, some proxies) still proves the server is there.
    wrong_path = openai_server.base_url.replace("/v1", "/x")
    LLMClient(LLMConfig(base_url=wrong_path, model="m")).check_reachable()

    openai_server.require_key = "sk-right"
    monkeypatch.setenv("DIFFLENS_TEST_KEY", "sk-wrong-but-long-enough-to-matter")
    config = LLMConfig(base_url=openai_server.base_url, model="m", api_key_env="DIFFLENS_TEST_KEY")
    with pytest.raises(DifflensError) as info:
        LLMClient(config).check_reachable()
    assert "answered HTTP 401: the API key in $DIFFLENS_TEST_KEY was rejected" in str(info.value)
    assert "sk-wrong" not in str(info.value) and info.value.__context__ is None
    monkeypatch.setenv("DIFFLENS_TEST_KEY", "sk-right")
    LLMClient(config).check_reachable()


def test_cli_parser_stays_light():
    """`difflens --help` builds every subcommand's parser without importing torch & co."""
    assert heavy_modules_after("from difflens.cli import build_parser; build_parser()") == "[]"
