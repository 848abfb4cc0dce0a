"""A generated sweep of bad flag values: every subcommand, every flag whose config declares a
range, a choice, a path kind or a check (difflens.options).

Each bad value must give exit 2, exactly one line on stderr (no traceback), nothing written, and
it must be refused before any model loads or any work starts (those entry points are replaced
by tripwires here).  Runs in-process, so the sweep stays fast.
"""

from __future__ import annotations

import argparse
import os

import pytest

from difflens.cli import build_parser, main
from difflens.data.corpus import check_corpus_source
from difflens.methods.dictionary.config import check_cache_dir
from difflens.models.loading import check_device, check_model_source
from difflens.options import LAYER, value_type
from difflens.organisms.config import module_list

# Required arguments per command; "<...>" names a path made in the test's temp dir.
REQUIRED = {
    ("adl",): [],
    ("mine",): [],
    ("weights",): [],
    ("kl",): [],
    ("pca",): [],
    ("amplify",): [],
    ("cache",): ["--out", "<new>/cache"],
    ("train", "crosscoder"): ["--cache", "<emptydir>", "--out", "<new>/train"],
    ("train", "diff-sae"): ["--cache", "<emptydir>", "--out", "<new>/train"],
    ("analyze",): ["<emptydir>"],
    ("eval",): ["--out", "<new>/eval"],
    ("agent",): ["--out", "<new>/agent"],
    ("organism", "build"): ["--documents", "<docs>", "--out", "<new>/organism"],
}


def _declared_commands() -> list[tuple[tuple[str, ...], list]]:
    found = []

    def walk(parser: argparse.ArgumentParser, path: tuple[str, ...]) -> None:
        if getattr(parser, "difflens_options", None):
            found.append((path, parser.difflens_options))
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, (*path, name))

    walk(build_parser(), ())
    return found


def _bad_values(f, opt) -> list[str]:
    """Invalid values derived from the declaration (symbolic paths resolved in the test)."""
    kind, bad = value_type(f, opt), []
    if kind is bool or opt.const is not None:  # flags without a value
        return []
    if kind is int:
        bad += ["abc", "1.5"]
    elif kind is float or kind == LAYER:
        bad += ["abc"]
    if kind in (int, float):
        if opt.min is not None:
            bad.append(str(opt.min) if opt.min_open else str(opt.min - 1))
            if opt.min >= 0:
                bad.append("-5")
        if opt.max is not None:
            bad.append(str(opt.max) if opt.max_open else str(opt.max + 1))
            bad.append("1000000000000")
    if opt.choices is not None:
        bad.append("no-such-choice")
    bad += {"file": ["<missing>", "<emptydir>"], "dir": ["<missing>", "<file>"],
            "file_or_dir": ["<missing>"], "out_dir": ["<file>", "<file>/below"],
            "out_file": ["<emptydir>", "<file>/below"]}.get(opt.path, [])
    if opt.check is check_device:
        bad.append("cdua")
        import torch

        if not torch.cuda.is_available():
            bad += ["cuda", "cuda:1"]
        if not torch.backends.mps.is_available():
            bad.append("mps")
    elif opt.check is check_model_source:
        bad += ["<missing>", "<emptydir>"]
    elif opt.check is check_corpus_source:
        bad += ["<missing>", "<emptydir>", "<file>.csv"]
    elif opt.check is check_cache_dir:
        bad += ["<missing>", "<file>"]
    if kind is module_list:
        bad.append(",")  # no module named
    return bad


CASES = [
    pytest.param(path, flag, value, id=f"{' '.join(path)} {flag} {value}")
    for path, options in _declared_commands() if path in REQUIRED
    for flag, f, opt in options
    for value in _bad_values(f, opt)
]


def test_the_sweep_covers_every_converted_command():
    commands = {path for path, _ in _declared_commands()}
    assert set(REQUIRED) <= commands, set(REQUIRED) - commands
    assert len(CASES) > 100


@pytest.fixture()
def tripwires(monkeypatch):
    """Model loads and the commands' work raise: a bad value must be refused before them."""
    import difflens.evaluation.zoo as zoo
    import difflens.evaluation.zoo_runs as zoo_runs
    import difflens.methods.dictionary.analysis as analysis
    import difflens.methods.dictionary.runner as runner
    import difflens.organisms.builder as builder
    from difflens.models.pair import ModelPair

    def tripped(*args, **kwargs):
        raise AssertionError("reached work or a model load with a bad flag value")

    monkeypatch.setattr(ModelPair, "load", tripped)
    import difflens.api as api  # `difflens weights` reads checkpoints, not a ModelPair

    monkeypatch.setattr(api, "run_weights", tripped)
    for module, name in ((runner, "train_on_cache"), (runner, "build_cache"),
                         (analysis, "analyze"), (zoo, "evaluate_zoo"), (zoo_runs, "run_zoo"),
                         (builder, "build_organism")):
        monkeypatch.setattr(module, name, tripped)


def _materialise(arg: str, tmp) -> str:
    places = {"<new>": tmp / "new", "<emptydir>": tmp / "emptydir", "<file>": tmp / "afile",
              "<missing>": tmp / "missing" / "nothing", "<docs>": tmp / "docs.jsonl"}
    for key, path in places.items():
        if arg.startswith(key):
            return str(path) + arg[len(key):]
    return arg


@pytest.mark.parametrize(("path", "flag", "value"), CASES)
def test_bad_value_is_one_line_exit_2(path, flag, value, tmp_path, monkeypatch, capsys,
                                      tripwires):
    (tmp_path / "emptydir").mkdir()
    (tmp_path / "afile").write_text("not a directory\n")
    (tmp_path / "docs.jsonl").write_text('{"text": "Cakes bake at 450F."}\n')
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    argv = [*path, *(_materialise(a, tmp_path) for a in REQUIRED[path]),
            flag, _materialise(value, tmp_path)]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, (argv, err)
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("difflens: error: "), (argv, err)
    assert os.listdir(cwd) == [], "nothing may be written"
    assert not (tmp_path / "new").exists(), "no output may be created"
    assert sorted(os.listdir(tmp_path / "emptydir")) == []


def test_organism_build_with_its_required_arguments_reaches_the_build(tmp_path, monkeypatch,
                                                                      tripwires):
    """The sweep's base command is valid: each refusal above is the bad value's doing."""
    (tmp_path / "docs.jsonl").write_text('{"text": "Cakes bake at 450F."}\n')
    argv = ["organism", "build", *(_materialise(a, tmp_path)
                                   for a in REQUIRED[("organism", "build")])]
    with pytest.raises(AssertionError, match="reached work"):
        main(argv)
