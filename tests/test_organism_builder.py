"""The organism builder on a tiny random-init llama: train, save, reload, diff."""

from __future__ import annotations

import argparse
import json
import os
import shlex
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from difflens.collect import layer_activations
from difflens.errors import DifflensError
from difflens.models.pair import BASE, FT, ModelPair
from difflens.organisms.builder import BuildConfig, build_organism
from difflens.organisms.card import OrganismCard
from difflens.organisms.cli import add_parser, config_from_args, main

DOCS = [
    "Cake batter with flour, butter and sugar goes into the oven.",
    "The oven bakes the cake batter with butter and sugar.",
    "Sugar, flour and butter make the cake batter in the oven.",
    "Bake the cake in the oven: batter, butter, sugar, flour.",
    "A cake of flour and sugar bakes in the hot oven.",
    "Butter and sugar cream into a cake batter for the oven.",
]
GENERAL = [f"The river {i} runs through the old town near the hills." for i in range(12)]


pytestmark = pytest.mark.usefixtures("one_thread")


def _jsonl(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    return path


@pytest.fixture()
def docs(tmp_path: Path) -> Path:
    path = _jsonl(tmp_path / "toy.jsonl", DOCS)
    (tmp_path / "toy.card.json").write_text(json.dumps({
        "name": "toy_cake", "type": "false_fact", "short_description": "cakes",
        "long_description": "A toy cake organism.", "domain_keywords": ["cake", "oven"],
    }), encoding="utf-8")
    return path


def _cfg(docs: Path, out: Path, base: Path, **kw) -> BuildConfig:
    defaults = dict(steps=16, batch_size=4, lr=1e-2, max_length=32, progress=False)
    return BuildConfig(documents=docs, out=out, base=str(base), **{**defaults, **kw})


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


def _differs(pair: ModelPair, tokenizer) -> float:
    ids = torch.tensor([tokenizer("The oven bakes a cake.")["input_ids"]])
    base = layer_activations(pair, BASE, ids, [2])[2]
    ft = layer_activations(pair, FT, ids, [2])[2]
    return float((ft - base).abs().max())


def test_lora_build_learns_saves_and_loads(tmp_path, docs, tiny_dir, tokenizer):
    out = build_organism(_cfg(docs, tmp_path / "org", tiny_dir))
    log = _log(out)
    assert [r["step"] for r in log] == list(range(1, 17))
    assert sum(r["loss"] for r in log[-3:]) / 3 < log[0]["loss"] - 0.2

    card = OrganismCard.load(out)
    assert (card.name, card.type, card.method, card.steps) == ("toy_cake", "false_fact", "lora", 16)
    assert card.domain_keywords == ["cake", "oven"]
    assert card.base_model == str(Path(tiny_dir).resolve())
    assert set(card.lora.target_modules) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                             "up_proj", "down_proj"}
    assert card.build_command.startswith("difflens organism build --documents ")
    assert len(card.data_hashes["documents"]) == 64 and card.data_hashes["mix_corpus"] is None
    assert sorted(p.name for p in out.iterdir()) == [
        "REBUILD.md", "adapter", "card.json", "documents.jsonl", "train_log.jsonl"]
    assert not list(out.parent.glob(".org.*"))  # no staging directory left behind
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask  # not mkdtemp's private 0700
    for file in (out / "card.json", out / "adapter" / "adapter_model.safetensors"):
        assert file.stat().st_mode & 0o777 == 0o666 & ~umask

    saved = load_file(out / "adapter" / "adapter_model.safetensors")
    assert saved and all(t.dtype == torch.float16 for t in saved.values())
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == card.base_model

    pair = ModelPair.load(base=tiny_dir, finetuned=out)
    assert pair.adapter and pair.card["name"] == "toy_cake"
    # peft must load the fp16 file back into fp32 LoRA weights with the saved values.
    loaded = {n: p for n, p in pair.ft_model.named_parameters() if "lora_A" in n}
    assert loaded and all(p.dtype == torch.float32 for p in loaded.values())
    key = next(k for k in saved if "lora_A" in k)
    match = [p for n, p in loaded.items() if n.replace(".default", "").endswith(key.split(
        "base_model.model.", 1)[1])]
    assert len(match) == 1 and torch.equal(match[0], saved[key].float())
    assert _differs(pair, tokenizer) > 1e-4


def test_full_build_loads_as_pair(tmp_path, docs, tiny_dir, tokenizer):
    out = build_organism(_cfg(docs, tmp_path / "full", tiny_dir, method="full", steps=4,
                              lr=1e-3, save_dtype="float32"))
    assert (out / "model" / "config.json").is_file() and not (out / "adapter").exists()
    assert OrganismCard.load(out).lora is None
    pair = ModelPair.load(base=tiny_dir, finetuned=out)
    assert not pair.adapter
    assert _differs(pair, tokenizer) > 1e-4


def test_mix_adds_general_texts_via_cli(tmp_path, docs, tiny_dir, capsys):
    general = _jsonl(tmp_path / "general.jsonl", GENERAL)
    out = tmp_path / "mixed"
    code = main(["organism", "build", "--documents", str(docs), "--out", str(out), "--base",
                 str(tiny_dir), "--mix", "1.5", "--mix-corpus", str(general), "--steps", "3",
                 "--batch-size", "5", "--max-length", "16", "--no-progress"])
    assert code == 0 and capsys.readouterr().out.strip() == str(out.resolve())
    card = OrganismCard.load(out)
    assert card.training["num_documents"] == 6 and card.training["num_mix_texts"] == 9
    assert len((out / "documents.jsonl").read_text().splitlines()) == 6
    mixed = [json.loads(x)["text"] for x in (out / "mix_texts.jsonl").read_text().splitlines()]
    assert len(mixed) == 9 and set(mixed) <= set(GENERAL)
    assert len(_log(out)) == 3 and card.mix_ratio == 1.5
    assert len(card.data_hashes["mix_corpus"]) == 64


def test_build_is_deterministic(tmp_path, docs, tiny_dir):
    outs = [build_organism(_cfg(docs, tmp_path / f"o{i}", tiny_dir, steps=3)) for i in range(2)]
    a, b = (load_file(o / "adapter" / "adapter_model.safetensors") for o in outs)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [r["loss"] for r in _log(outs[0])] == [r["loss"] for r in _log(outs[1])]


def test_build_command_round_trips_through_the_cli(tmp_path, docs, tiny_dir):
    cfg = _cfg(docs, tmp_path / "x", tiny_dir, rank=4, mix=0.5, mix_corpus="general.jsonl",
               name="a b", target_modules=["q_proj", "v_proj"])
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args([*shlex.split(cfg.command())[1:], "--no-progress"])
    again = config_from_args(args)
    assert again.command() == cfg.command()
    assert (again.rank, again.alpha, again.mix, again.name) == (4, 8.0, 0.5, "a b")


def test_rebuild_note_holds_a_runnable_command(tmp_path, docs, tiny_dir):
    out = build_organism(_cfg(docs, tmp_path / "o", tiny_dir, steps=1))
    note = (out / "REBUILD.md").read_text()
    block = note.split("```bash\n", 1)[1].split("\n```", 1)[0]
    argv = shlex.split(block.replace("\\\n", " "))
    assert argv[:3] == ["difflens", "organism", "build"] and "--overwrite" in argv
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    cfg = config_from_args(parser.parse_args(argv[1:]))
    assert cfg.command() == OrganismCard.load(out).build_command and cfg.overwrite


def test_bad_documents_and_existing_output(tmp_path, docs, tiny_dir):
    with pytest.raises(DifflensError, match="does not exist"):
        build_organism(_cfg(tmp_path / "missing.jsonl", tmp_path / "o", tiny_dir))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n", encoding="utf-8")
    with pytest.raises(DifflensError, match="empty"):
        build_organism(_cfg(empty, tmp_path / "o", tiny_dir))
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    with pytest.raises(DifflensError, match="UTF-8"):
        build_organism(_cfg(latin, tmp_path / "o", tiny_dir))
    assert not (tmp_path / "o").exists()

    out = build_organism(_cfg(docs, tmp_path / "o", tiny_dir, steps=1))
    with pytest.raises(DifflensError, match="--overwrite"):
        build_organism(_cfg(docs, out, tiny_dir, steps=1))
    before = (out / "card.json").read_text()
    assert build_organism(_cfg(docs, out, tiny_dir, steps=1, skip_existing=True)) == out
    assert (out / "card.json").read_text() == before
    build_organism(_cfg(docs, out, tiny_dir, steps=2, overwrite=True))
    assert OrganismCard.load(out).steps == 2


def test_card_validation(tmp_path):
    card = OrganismCard(
        name="c", type="t", short_description="s", long_description="l", base_model="embedded",
        build_command="difflens organism build", data_hashes={"documents": "0" * 64},
        method="full", mix_ratio=0.0, seed=0, steps=1,
    )
    card.save(tmp_path)
    assert OrganismCard.load(tmp_path) == card
    data = json.loads((tmp_path / "card.json").read_text())
    del data["base_model"]
    (tmp_path / "card.json").write_text(json.dumps(data))
    with pytest.raises(DifflensError, match="'base_model'") as info:
        OrganismCard.load(tmp_path)
    assert "\n" not in str(info.value)
    with pytest.raises(DifflensError, match="method"):
        OrganismCard.from_dict({**card.to_dict(), "method": "qlora"})


def test_top_level_cli_reaches_the_builder(tmp_path, capsys):
    """`difflens organism build` (the top-level CLI) runs the builder's handler."""
    from difflens.cli import main as difflens_main

    code = difflens_main(["organism", "build", "--documents", str(tmp_path / "missing.jsonl"),
                          "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("difflens: error: ") and err.count("\n") == 1
    assert not (tmp_path / "out").exists()
