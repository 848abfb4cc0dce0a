"""``difflens agent``: the interpretability agent on any model pair, from the command line."""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from dataclasses import dataclass
from typing import Any

from difflens.agent.methods import METHODS
from difflens.cli_args import add_llm_args, add_model_args, llm_fields, load_options, model_sources
from difflens.options import add_arguments, from_args, option, validate

EPILOG = """\
Example (any OpenAI-compatible endpoint; the key is read from $OPENAI_API_KEY or the variable
--llm-api-key-env names, and written nowhere):

  difflens agent --base Qwen/Qwen3-1.7B --finetuned ./my-finetune \\
      --llm-base-url https://api.openai.com/v1 --llm-model gpt-5 --methods adl,mining
  difflens agent ... --black-box          # the baseline: the models only, no diffing results

The method runs land in OUT/<method>/ (ordinary run directories, reused when finished with
the same settings), the agent's transcript, accounting, hypothesis log and answer in
OUT/agent/.  The same command again reuses the finished answer; --again asks the agent anew.
Each method's own flags go in --<method>-args, written with "=" (argparse would read a lone
flag as one of its own): --adl-args="--n-texts 500 --skip causal" --mining-args="--topics 5".
"""


@dataclass
class AgentSizes:
    """The numeric ``difflens agent`` flags, with their ranges (checked before any work)."""

    budget: int = option(5, min=0, help="model interactions (ask_model, generate_steered) the "
                                        "agent may make (default 5)")
    max_turns: int = option(20, min=1, help="LLM answers per run at most (default 20)")
    max_new_tokens: int = option(48, min=1, help="tokens per model answer (default 48)")


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "agent", help="ask the interpretability agent what a finetune taught",
        description="Runs (or reuses) the diffing methods' runs on the pair, then an LLM agent "
                    "that reads them, queries the models within a budget and describes what "
                    "the finetune taught. Prints the hypothesis and its evidence.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    p.add_argument("--methods", default=None, metavar="M[,M...]",
                   help=f"diffing methods the agent reads: {', '.join(METHODS)} "
                        "(default adl)")
    for name, entry in METHODS.items():
        p.add_argument(f"--{name}-args", dest=f"{name}_args", default=None, metavar="FLAGS",
                       help=f"flags of `difflens {entry.command}` for its run, quoted: "
                            f"--{name}-args=\"--flag value ...\"")
    p.add_argument("--black-box", action="store_true",
                   help="the baseline: no diffing results, only the models")
    p.add_argument("--amplify-tool", action="store_true",
                   help="also offer generate_amplified: answers sampled with the finetune's "
                        "logit difference amplified (needs only the two models' logits, so it "
                        "is allowed with --black-box too)")
    add_arguments(p, AgentSizes)
    p.add_argument("--protocol", default="auto", choices=["auto", "native", "text"],
                   help="tool protocol: native tool calls, plain text, or auto (fallback on 400)")
    p.add_argument("--hide", nargs="*", default=[], metavar="NAME",
                   help="names replaced by a placeholder in everything the agent reads")
    p.add_argument("--out", default=None,
                   help="run directory (default runs/agent-<hash of pair, methods, settings>)")
    p.add_argument("--again", action="store_true",
                   help="run the agent anew even if OUT/agent holds a finished answer")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_llm_args(p)
    p.set_defaults(handler=run)
    return p


def run(args: argparse.Namespace) -> int:
    import logging

    from difflens.agent.methods import parse_methods
    from difflens.agent.session import build_settings, execute, plan_run
    from difflens.errors import DifflensError

    # One log line per LLM request would bury the answer (the client's HTTP library is
    # "httpx2" in some installs, which the CLI's list of noisy loggers does not name).
    logging.getLogger("httpx2").setLevel(logging.WARNING)
    # Flags, sources, the endpoint's settings and every run directory are checked before the
    # endpoint is probed, and all of that before any model loads.
    sizes = from_args(AgentSizes, args)
    validate(sizes)
    sources = model_sources(args)
    options = load_options(args)
    if args.black_box and args.methods:
        raise DifflensError("--black-box reads no diffing results: drop --methods")
    methods = [] if args.black_box else parse_methods(args.methods or "adl")
    settings, llm = build_settings(methods, args.black_box, sizes.budget, sizes.max_turns,
                                   args.protocol, sizes.max_new_tokens, args.hide,
                                   llm_fields(args), amplify=args.amplify_tool)
    flags = {name: getattr(args, f"{name}_args") for name in METHODS
             if getattr(args, f"{name}_args", None) is not None}
    plan = plan_run(settings, {"base": sources.base, "finetuned": sources.finetuned,
                               "device": options.device, "dtype": options.dtype},
                    flags, args.out, args.again)
    if plan.answer is None:
        _check_corpora(plan)
        from difflens.llm import LLMClient

        LLMClient(llm).check_reachable()  # a wrong URL or key: one line, before the models
    answer = execute(plan, llm, load_options=options, progress=not args.quiet)
    print_answer(answer)
    if answer["status"] == "error":
        print(f"difflens: error: the agent's endpoint failed ({answer['error']}); run the "
              "same command again to retry", file=sys.stderr)
        return 1
    return 0


def _check_corpora(plan: Any) -> None:
    """Read the corpus of each method run still to make (one line if it is unusable)."""
    from difflens.data.corpus import check_corpus

    for name, config in plan.configs.items():
        if not plan.finished[name] and hasattr(config, "corpus"):
            check_corpus(config.corpus, limit=getattr(config, "n_texts", None))


def print_answer(answer: dict[str, Any]) -> None:
    """The hypothesis, its evidence and where the files are, in a few lines."""
    source = "black box (no diffing results)" if answer.get("black_box") else \
        ", ".join(answer.get("methods") or [])
    reused = " (reused: pass --again to ask anew)" if answer.get("reused") else ""
    print(f"\nagent [{source}] {answer['status']}{reused}")
    print(f"\nhypothesis: {answer['description'] or '(none)'}")
    hypotheses = answer.get("hypotheses") or []
    print(f"\nevidence: {len(hypotheses)} hypotheses recorded; model interactions "
          f"{answer.get('interactions_used', 0)} of {answer.get('budget', 0)}")
    for i, text in enumerate(hypotheses, 1):
        print(f"  {i}. {_short(text)}")
    calls = Counter(answer.get("tools_called") or [])
    if calls:
        print("  tools: " + ", ".join(f"{name} ×{n}" for name, n in calls.items()))
    files = answer.get("files") or {}
    print(f"\ntranscript: {files.get('transcript', '?')}")
    print(f"run dir: {answer.get('run_dir', '?')}")


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
