"""The one entry point: ``difflens <command>``.

User errors (:class:`DifflensError`) print one line and exit 2, without a traceback; so do
argparse's own errors (unknown flag, a value of the wrong type).  Ctrl-C exits 130 (finished
stages stay on disk and the next run resumes from them).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from difflens.cli_args import ArgumentParser, add_model_args, layer_arg, load_options
from difflens.errors import DifflensError

__all__ = ["ArgumentParser", "add_model_args", "build_parser", "layer_arg", "load_options",
           "main"]

Handler = Callable[[argparse.Namespace], int | None]


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
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
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2, already printed in one line)
        return exc.code if isinstance(exc.code, int) else 2
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(message)s")
    for noisy in ("httpx", "httpx2", "urllib3", "filelock", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    import warnings

    # Deprecation chatter from transformers/peft internals is not actionable for users.
    warnings.filterwarnings("ignore", category=FutureWarning)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 1
    from difflens import distributed

    try:
        _init_distributed(args.command)
        code = int(args.handler(args) or 0)
    except DifflensError as exc:
        print(f"difflens: error: {exc}", file=sys.stderr)
        code = exc.exit_code
    except KeyboardInterrupt:
        print("difflens: interrupted; finished stages are kept and the next run resumes",
              file=sys.stderr)
        code = 130
    except distributed.Stopped as exc:  # torchrun ends the run after another rank failed
        print(f"difflens: error: {exc}", file=sys.stderr)
        code = 2
    except (distributed.WorkerDone, distributed.PeerExit) as done:  # a torchrun rank's end
        code = int(done.code or 0)
    return distributed.leave(code)  # under torchrun: exit now, without gloo's teardown


# Commands that shard their corpus over torchrun's ranks (difflens.distributed).
DATA_PARALLEL = ("adl", "mine", "kl", "pca", "cache", "train")


def _init_distributed(command: str | None) -> None:
    """Under torchrun (its WORLD_SIZE / RANK variables set), start the process group; a plain
    ``difflens`` never touches torch.distributed."""
    import os

    if "WORLD_SIZE" not in os.environ or "RANK" not in os.environ:
        return
    from difflens import distributed

    distributed.refuse_unsupported(command, DATA_PARALLEL)
    distributed.init_from_env()


if __name__ == "__main__":
    sys.exit(main())
