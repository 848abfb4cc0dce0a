"""Every bad input gets one line saying what is wrong, a non-zero exit, and no traceback."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from difflens.cli import main
from tiny import save_tiny, tiny_model

SENTENCES = "\n".join(
    f"Sentence {i} describes a quiet harbour town with boats and narrow streets." for i in range(30)
)


@pytest.fixture()
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(SENTENCES, encoding="utf-8")
    return path


def run_cli(capsys, *argv) -> tuple[int, str]:
    code = main(["adl", "--quiet", *map(str, argv)])
    err = capsys.readouterr().err.strip().splitlines()
    return code, err[-1] if err else ""


def assert_one_line_error(code: int, line: str, *needles: str) -> None:
    assert code == 2, line
    assert line.startswith("difflens: error: ")
    for needle in needles:
        assert needle in line, line


def test_different_vocabularies(capsys, tmp_path, tiny_dir, corpus):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel()
    tok.train_from_iterator(["completely other words here"] * 5,
                            trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>"]))
    other = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>")
    ft = save_tiny(tmp_path / "other-vocab", "llama", 1, other)
    code, line = run_cli(capsys, "--base", tiny_dir, "--finetuned", ft, "--corpus", corpus)
    assert_one_line_error(code, line, "different tokenizers")


def test_different_shapes(capsys, tmp_path, tiny_dir, tokenizer, corpus):
    model = tiny_model("llama", 1)
    from transformers import AutoModelForCausalLM, LlamaConfig

    cfg = LlamaConfig(**{**model.config.to_dict(), "num_hidden_layers": 3})
    AutoModelForCausalLM.from_config(cfg).save_pretrained(tmp_path / "three-layers")
    tokenizer.save_pretrained(tmp_path / "three-layers")
    code, line = run_cli(capsys, "--base", tiny_dir, "--finetuned", tmp_path / "three-layers",
                         "--corpus", corpus)
    assert_one_line_error(code, line, "differ in shape", "4 vs 3 layers")


def test_layer_out_of_range_and_bad_k(capsys, tmp_path, tiny_dir, tiny_ft_dir, corpus):
    common = ["--base", tiny_dir, "--finetuned", tiny_ft_dir, "--corpus", corpus]
    code, line = run_cli(capsys, *common, "--layer", 9, "--out", tmp_path / "a")
    assert_one_line_error(code, line, "layer 9 is out of range", "4 layers")
    code, line = run_cli(capsys, *common, "--k", 0, "--out", tmp_path / "b")
    assert_one_line_error(code, line, "k must be a positive")
    assert not (tmp_path / "b").exists(), "nothing may be written for a rejected k"


def test_adapter_without_weights(capsys, tmp_path, tiny_dir, corpus):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    code, line = run_cli(capsys, "--base", tiny_dir, "--finetuned", adapter, "--corpus", corpus)
    assert_one_line_error(code, line, "no adapter_model.safetensors")


def test_corrupt_safetensors(capsys, tmp_path, tiny_dir, corpus):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_dir, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    code, line = run_cli(capsys, "--base", tiny_dir, "--finetuned", broken, "--corpus", corpus)
    assert_one_line_error(code, line, "not a valid safetensors file")


def test_pickle_checkpoint_refused(capsys, tmp_path, tokenizer, tiny_dir, corpus):
    import torch

    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_dir, pickled)
    (pickled / "model.safetensors").unlink()
    torch.save(tiny_model("llama", 1).state_dict(), pickled / "pytorch_model.bin")
    code, line = run_cli(capsys, "--base", tiny_dir, "--finetuned", pickled, "--corpus", corpus)
    assert_one_line_error(code, line, "pickle", "--allow-pickle")


def test_remote_code_refused(capsys, tmp_path, tiny_dir, corpus):
    remote = tmp_path / "remote"
    shutil.copytree(tiny_dir, remote)
    config = json.loads((remote / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    (remote / "config.json").write_text(json.dumps(config))
    code, line = run_cli(capsys, "--base", tiny_dir, "--finetuned", remote, "--corpus", corpus)
    assert_one_line_error(code, line, "--trust-remote-code")


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"", "is empty"),
        (b"hi\nyo\n", "shorter than 5 tokens"),
        (b"caf\xe9 au lait is \xff not utf8\n", "not valid UTF-8"),
    ],
)
def test_bad_corpora(capsys, tmp_path, tiny_dir, tiny_ft_dir, content, needle):
    path = tmp_path / "corpus.txt"
    path.write_bytes(content)
    code, line = run_cli(capsys, "--base", tiny_dir, "--finetuned", tiny_ft_dir,
                         "--corpus", path, "--out", tmp_path / "run")
    assert_one_line_error(code, line, needle)
    assert not (tmp_path / "run" / "activation_diff.safetensors").exists()


def test_hub_id_offline(capsys, monkeypatch, tiny_dir, corpus):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, line = run_cli(capsys, "--base", tiny_dir, "--finetuned", "nobody-xyz/no-such-model",
                         "--corpus", corpus)
    assert_one_line_error(code, line, "nobody-xyz/no-such-model", "offline")


def test_unwritable_cache(capsys, monkeypatch, tmp_path, corpus):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("DIFFLENS_CACHE", str(blocker / "cache"))
    code, line = run_cli(capsys, "--finetuned", "embedded", "--corpus", corpus)
    assert_one_line_error(code, line, "not writable", "DIFFLENS_CACHE")


def test_no_traceback_in_a_real_process(tmp_path, tiny_dir):
    proc = subprocess.run(
        [sys.executable, "-m", "difflens.cli", "adl", "--base", str(tiny_dir),
         "--finetuned", str(tmp_path / "missing-model")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"difflens: error: model path {tmp_path / 'missing-model'} does not exist; check the path"
    )
