"""Flag groups shared by the commands that load a model pair, generated from their dataclasses.

:class:`~difflens.models.loading.ModelSources` gives ``--base`` / ``--finetuned`` and
:class:`~difflens.models.loading.LoadOptions` the device, dtype and safety flags; both are
validated (device present, paths of a known kind, small JSON files parse) before anything loads.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable
from typing import Any

from difflens.models.loading import LoadOptions, ModelSources
from difflens.options import add_arguments, from_args, group, layer_arg, validate

__all__ = ["add_model_args", "layer_arg", "load_options", "model_sources"]


def add_model_args(p: argparse.ArgumentParser, exclude: Iterable[str] = ()) -> None:
    """``--base``, ``--finetuned``, ``--device``, ``--dtype``, ``--allow-pickle``,
    ``--trust-remote-code`` (less ``exclude``, field names) in a "models" group."""
    g = group(p, "models")
    add_arguments(g, ModelSources, exclude=exclude)
    add_arguments(g, LoadOptions, exclude=exclude)


def model_sources(args: argparse.Namespace) -> ModelSources:
    """``--base`` / ``--finetuned``, checked (one line) before anything loads."""
    sources = from_args(ModelSources, args)
    validate(sources)
    return sources


def load_options(args: argparse.Namespace, **overrides: object) -> LoadOptions:
    """The :class:`LoadOptions` of parsed flags, validated (e.g. the device exists)."""
    options = from_args(LoadOptions, args, **overrides)
    validate(options)
    return options


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors: ``difflens: error: <what> (see <prog> --help)``.

    Subparsers are made by the same class, so every subcommand answers the same way."""

    def error(self, message: str) -> None:  # type: ignore[override]
        text = " ".join(message.split())
        sys.stderr.write(f"difflens: error: {text} (see `{self.prog} --help`)\n")
        sys.exit(2)


def add_run_dir_args(p: argparse.ArgumentParser, kind: str) -> None:
    """``--out`` (the run directory, default ``runs/KIND-<hash of the settings>``) and
    ``--quiet`` (no progress bars): the flags every method command ends with."""
    p.add_argument("--out", default=None, help=f"run directory (default runs/{kind}-<hash>)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def add_llm_args(p: argparse.ArgumentParser) -> None:
    """Grader endpoint flags (any OpenAI-compatible server); offline graders without them."""
    import os

    g = p.add_argument_group("graders (default: offline, no key needed)")
    g.add_argument("--llm-base-url", default=os.environ.get("DIFFLENS_LLM_BASE_URL"),
                   help="OpenAI-compatible endpoint, e.g. https://api.openai.com/v1 or "
                        "http://localhost:8000/v1 (env DIFFLENS_LLM_BASE_URL)")
    g.add_argument("--llm-model", default=os.environ.get("DIFFLENS_LLM_MODEL"),
                   help="grader model name (env DIFFLENS_LLM_MODEL)")
    g.add_argument("--llm-api-key-env", default=os.environ.get("DIFFLENS_LLM_API_KEY_ENV",
                                                               "OPENAI_API_KEY"),
                   help="NAME of the environment variable holding the API key")
    g.add_argument("--offline", action="store_true",
                   help="use the offline graders even when an endpoint is configured")


def llm_fields(args: argparse.Namespace) -> dict:
    if args.offline or not args.llm_base_url:
        return {}
    return {"llm_base_url": args.llm_base_url, "llm_model": args.llm_model,
            "llm_api_key_env": args.llm_api_key_env}


def config_and_pair(args: argparse.Namespace, config_class: type, resolve_defaults: Callable,
                    **fields: object) -> tuple[Any, Any, Any]:
    """``(config, pair, out)`` for a command that reads a corpus through a loaded pair.

    The order every such command checks in, so a mistake costs no model load: the flags
    (ranges, choices, paths, device), ``--out``, the corpus at the size the run will read
    (``resolve_defaults(config, gpu)``), and only then the models.  ``fields``: config fields
    not generated as flags (the LLM endpoint, say).
    """
    from pathlib import Path

    from difflens.data.corpus import check_corpus
    from difflens.models.device import is_gpu
    from difflens.models.pair import ModelPair
    from difflens.options import check_path

    config = from_args(config_class, args, **fields)
    config.validate()
    options = load_options(args)
    if args.out:
        check_path(args.out, "out_dir", "--out")
    check_corpus(config.corpus, limit=resolve_defaults(config, is_gpu(options.device)).n_texts)
    pair = ModelPair.load(config.base, config.finetuned, options)
    return config, pair, Path(args.out) if args.out else None
