"""The one JSON reader and the one safetensors reader (difflens.io.artifacts): every missing,
unreadable or malformed file is one DifflensError line naming the file — also where a read
used to end in a traceback (safetensors headers the size check passes, a run's run.json read
by the report outside the CLI, a JSON list where a card belongs)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from difflens.errors import DifflensError
from difflens.io.artifacts import read_json, read_tensors


def _one_line(info: pytest.ExceptionInfo, *needles: str) -> str:
    text = str(info.value)
    assert "\n" not in text
    for needle in needles:
        assert needle in text, (needle, text)
    return text


def _safetensors(path: Path, header: object, data: bytes = b"") -> Path:
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(len(text).to_bytes(8, "little") + text + data)
    return path


def test_json_reader(tmp_path):
    good = tmp_path / "good.json"
    good.write_text('{"a": 1}', encoding="utf-8")
    assert read_json(good, expect=dict) == {"a": 1}
    broken = tmp_path / "broken.json"
    broken.write_text('{"a": ', encoding="utf-8")
    latin = tmp_path / "latin.json"
    latin.write_bytes(b'{"caf\xe9": 1}')
    listed = tmp_path / "listed.json"
    listed.write_text("[1, 2]", encoding="utf-8")
    cases = [(broken, "is not valid JSON"), (latin, "cannot read"), (tmp_path, "cannot read"),
             (tmp_path / "missing.json", "does not exist"), (listed, "is not a JSON object")]
    for path, needle in cases:
        with pytest.raises(DifflensError) as info:
            read_json(path, what="thing", fix="repair it", expect=dict)
        _one_line(info, f"thing {path}", needle, "repair it")


def test_safetensors_reader(tmp_path):
    # The header parses and the sizes agree, but safetensors refuses the dtype (this used to
    # escape as a SafetensorError traceback), or the header is not an object.
    bad_dtype = _safetensors(tmp_path / "dtype.safetensors",
                             {"x": {"dtype": "Q9", "shape": [2], "data_offsets": [0, 8]}},
                             b"\0" * 8)
    listed = _safetensors(tmp_path / "list.safetensors", [1, 2])
    for path in (bad_dtype, listed):
        with pytest.raises(DifflensError) as info:
            read_tensors(path)
        _one_line(info, str(path), "not a valid safetensors file")
    with pytest.raises(DifflensError) as info:
        read_tensors(tmp_path / "missing.safetensors")
    _one_line(info, "missing.safetensors does not exist")


def test_dictionary_weights_with_a_bad_header_are_one_line(tmp_path):
    from difflens.methods.dictionary import Crosscoder, DictionaryConfig, load_dictionary

    Crosscoder(DictionaryConfig(d_in=4, width=8)).save(tmp_path / "cc")
    _safetensors(tmp_path / "cc" / "dictionary.safetensors",
                 {"W_enc": {"dtype": "Q9", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4)
    with pytest.raises(DifflensError) as info:
        load_dictionary(tmp_path / "cc")
    _one_line(info, "dictionary weights at", "unreadable", "re-create it")
    (tmp_path / "cc" / "config.json").write_text("[]", encoding="utf-8")
    with pytest.raises(DifflensError) as info:
        load_dictionary(tmp_path / "cc")
    _one_line(info, "config.json is not a JSON object")


def test_report_outside_the_cli_names_a_corrupt_run_json(tmp_path):
    from difflens.report.page import render_report

    (tmp_path / "run.json").write_text('{"kind": "adl", ', encoding="utf-8")
    with pytest.raises(DifflensError) as info:
        render_report(tmp_path)
    _one_line(info, "run.json is not valid JSON")


def test_documents_card_and_organism_card(tmp_path):
    from difflens.organisms.card import OrganismCard
    from difflens.organisms.documents import read_documents_card

    docs = tmp_path / "docs.jsonl"
    (tmp_path / "docs.card.json").write_text('["not", "an", "object"]', encoding="utf-8")
    with pytest.raises(DifflensError) as info:
        read_documents_card(docs)
    _one_line(info, "docs.card.json is not a JSON object", "fix or remove it")
    (tmp_path / "card.json").write_bytes(b'{"name": "caf\xe9"}')
    with pytest.raises(DifflensError) as info:
        OrganismCard.load(tmp_path)
    _one_line(info, "card.json", "rebuild the organism")
