"""The one entry point: ``difflens <command>``.

User errors (:class:`DifflensError`) print one line and exit 2, without a traceback; Ctrl-C
exits 130 (finished stages stay on disk and the next run resumes from them).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from difflens.errors import DifflensError

Handler = Callable[[argparse.Namespace], int | None]


def layer_arg(text: str) -> int | float:
    """``12`` → layer index 12, ``-1`` → last layer, ``0.75`` → relative depth."""
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"invalid layer {text!r}: give an index (12, -1) or a relative depth (0.75)"
            ) from None


def add_model_args(p: argparse.ArgumentParser) -> None:
    """Flags shared by every command that loads a model pair."""
    g = p.add_argument_group("models")
    g.add_argument("--base", default=None,
                   help="base model: 'embedded' (default), a model dir, a .gguf file or hub id")
    g.add_argument("--finetuned", default=None,
                   help="finetuned model: a PEFT adapter dir, organism dir, model dir, .gguf or "
                        "hub id (default: the shipped cake_bake organism)")
    g.add_argument("--device", default="cpu",
                   help="cpu, cuda, cuda:N, mps, or auto (device_map='auto' for big models)")
    g.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    g.add_argument("--allow-pickle", action="store_true",
                   help="accept .bin/.pt checkpoints (pickle can run code: trusted files only)")
    g.add_argument("--trust-remote-code", action="store_true",
                   help="allow models that ship their own Python code")


def load_options(args: argparse.Namespace):
    from difflens.models.loading import LoadOptions

    return LoadOptions(dtype=args.dtype, device=args.device, allow_pickle=args.allow_pickle,
                       trust_remote_code=args.trust_remote_code)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="difflens",
        description="Model diffing: find what a finetune taught a language model.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    from difflens.commands import register_all

    register_all(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(message)s")
    for noisy in ("httpx", "urllib3", "filelock", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    import warnings

    # Deprecation chatter from transformers/peft internals is not actionable for users.
    warnings.filterwarnings("ignore", category=FutureWarning)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 1
    try:
        return int(args.handler(args) or 0)
    except DifflensError as exc:
        print(f"difflens: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("difflens: interrupted; finished stages are kept and the next run resumes",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
