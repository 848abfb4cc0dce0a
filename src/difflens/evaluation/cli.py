"""``difflens eval``: the agent evaluation harness from the command line."""

from __future__ import annotations

import argparse
from typing import Any

EPILOG = """\
Reproducing the seed's agent table (ADL vs Diff Mining vs black-box, budgets 0/5/50) with a
real endpoint (key read from $OPENAI_API_KEY, or the variable --llm-api-key-env names; any
OpenAI-compatible server works):

  export OPENAI_API_KEY=...
  difflens eval --agents adl mining blackbox --budgets 0 5 50 --repeats 5 \\
      --llm-base-url https://api.openai.com/v1 --agent-model gpt-5 --llm-model gpt-5-mini \\
      --grade-repeats 3 --out runs/eval
  cat runs/eval/table.txt   # mean grade, grade>=2 and grade>=4 rates with 95% bootstrap CIs

Every registered organism is used unless --organisms names some.  Each gets ADL and Diff
Mining runs under --runs-root (default OUT/methods: <root>/<organism>/adl and .../mining;
--device cuda on a GPU), read by the agents; finished runs made with the same settings are
reused, runs made with other settings (or older defaults) stop with a one-line error.
Each organism's own weights from the registry serve the model tools (--finetuned overrides).
--protocol text forces the plain-text tool protocol (for servers without native tool calls;
auto switches on an HTTP 400).  Finished agent runs are reused: an interrupted evaluation
resumes.  The seed reports (33 organisms, gpt-5 agent, gpt-5-mini grader): black-box i=0/5/50
at ~15%/~25%/39% grade>=2; ADL i=0/5 at 82%/91% grade>=2 and 24%/30% grade>=4.

Method-level evaluation (no endpoint needed): with the runs above, OUT/zoo.txt lists the
domain words among each readout's top-20 tokens (own domain / best other domain: the
cross-domain control), hits per layer, and the 1:1 data-mixing ablation (mixed organism vs its
unmixed twin); OUT/report.html shows it all.  Without an endpoint only this part runs:

  difflens eval --offline                      # whole zoo; CPU: ~5 min per organism
  difflens eval --offline --adl-skip steering similarity causal --mining-texts 32   # quick
"""


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from difflens.cli import add_model_args
    from difflens.commands import add_llm_args

    p = sub.add_parser(
        "eval", help="evaluate interpretability agents on organisms (seed 003's agent table)",
        description="Organisms × {ADL, Diff Mining, black-box} agents × interaction budgets × "
                    "repeats; hypotheses graded 1-5 against each organism's rubric; summary with "
                    "bootstrap CIs and grade>=2 / grade>=4 rates.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--organisms", nargs="*", default=[],
                   help="registry names (default: all registered organisms)")
    p.add_argument("--agents", nargs="+", default=["adl", "mining", "blackbox"],
                   choices=["adl", "mining", "blackbox"])
    p.add_argument("--budgets", nargs="+", type=int, default=[0, 5],
                   help="model-interaction budgets (default 0 5)")
    p.add_argument("--repeats", type=int, default=1, help="agent runs per configuration")
    p.add_argument("--runs-root", default=None,
                   help="folder with <organism>/adl and <organism>/mining run directories "
                        "(default: OUT/methods)")
    methods = p.add_argument_group("method-level evaluation")
    methods.add_argument("--no-method-runs", dest="method_runs", action="store_false",
                         help="only read runs already under --runs-root; never start ADL / "
                              "Diff Mining")
    methods.add_argument("--n-texts", type=int, default=None,
                         help="ADL reference texts per organism (default: ADL's own)")
    methods.add_argument("--adl-skip", nargs="*", default=[], metavar="STAGE",
                         help="ADL stages to skip (patchscope, steering, relevance, similarity, "
                              "causal, report)")
    methods.add_argument("--mining-texts", type=int, default=None,
                         help="Diff Mining texts per organism (default: mining's own)")
    methods.add_argument("--no-mining", dest="mining", action="store_false",
                         help="no Diff Mining runs")
    p.add_argument("--out", default="runs/eval", help="output folder (resumes if present)")
    p.add_argument("--max-turns", type=int, default=20, help="agent answers per run at most")
    p.add_argument("--protocol", default="auto", choices=["auto", "native", "text"],
                   help="tool protocol: native tool calls, plain text, or auto (fallback on 400)")
    p.add_argument("--agent-model", default=None, help="agent model (default: --llm-model)")
    p.add_argument("--grade-repeats", type=int, default=3,
                   help="independent LLM gradings averaged per hypothesis")
    p.add_argument("--max-new-tokens", type=int, default=48, help="tokens per model answer")
    p.add_argument("--n-boot", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    add_llm_args(p)
    add_model_args(p)
    p.set_defaults(handler=run)
    return p


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from difflens.commands import llm_fields
    from difflens.evaluation.report import render_eval_report
    from difflens.evaluation.zoo import evaluate_zoo
    from difflens.evaluation.zoo_runs import ZooRunConfig, run_zoo
    from difflens.organisms.registry import get_organism, load_registry

    registry = load_registry()
    names = list(args.organisms) or list(registry)
    for name in names:
        get_organism(name, registry)  # one-line error naming the known organisms
    runs_root = args.runs_root or str(Path(args.out) / "methods")
    if args.method_runs:
        adl = {"skip": list(args.adl_skip), "device": args.device, "dtype": args.dtype,
               **({"n_texts": args.n_texts} if args.n_texts else {})}
        mining = ({"n_texts": args.mining_texts} if args.mining_texts else {}) if args.mining \
            else None
        # Finished runs with the same settings are read back; stale ones stop with one line.
        for note in run_zoo(registry, names, ZooRunConfig(runs_root, adl, mining,
                                                          llm_fields(args))):
            print(f"note: {note}")
    zoo = evaluate_zoo(registry, names, runs_root, args.out)
    print(zoo["table"])
    summary: list = []
    if args.llm_base_url and (args.agent_model or args.llm_model):
        summary = _run_agents(args, names, runs_root)
    else:
        print("no LLM endpoint (--llm-base-url, --llm-model): agents skipped, method-level "
              "evaluation only")
    report = render_eval_report(args.out, summary, zoo)
    print(f"wrote {args.out}/zoo.json, {args.out}/zoo.txt and {report}")
    return 0


def _run_agents(args: argparse.Namespace, names: list[str], runs_root: str) -> list:
    from difflens.evaluation.harness import EvalConfig, run_eval
    from difflens.graders import LLMGrader, OfflineGrader
    from difflens.llm import LLMConfig

    grader_llm = LLMConfig(base_url=args.llm_base_url, model=args.llm_model or args.agent_model,
                           api_key_env=args.llm_api_key_env)
    agent_llm = grader_llm.replace(model=args.agent_model or grader_llm.model)
    grader = OfflineGrader() if args.offline else LLMGrader(grader_llm,
                                                            score_repeats=args.grade_repeats)
    config = EvalConfig(out=args.out, organisms=names, agents=list(args.agents),
                        budgets=list(args.budgets), repeats=args.repeats,
                        runs_root=runs_root, max_turns=args.max_turns,
                        protocol=args.protocol, n_boot=args.n_boot, seed=args.seed)
    args.runs_root = runs_root
    report = run_eval(config, agent_llm, grader, _access_factory(args))
    print(report["table"])
    print(f"wrote {args.out}/eval.json and {args.out}/table.txt")
    return report["summary"]


def _access_factory(args: argparse.Namespace) -> Any:
    """Model access per organism: loaded on first use and shared by its agents."""
    from pathlib import Path

    from difflens.agent import PairAccess
    from difflens.cli import load_options
    from difflens.errors import DifflensError
    from difflens.models.pair import ModelPair

    pairs: dict[str, Any] = {}

    def factory(entry: Any, agent: str) -> Any:
        key = "override" if args.finetuned else entry.name
        if key not in pairs:
            if args.finetuned:
                pairs[key] = ModelPair.load(args.base, args.finetuned, load_options(args))
            elif entry.weights:
                pairs[key] = ModelPair.load(entry.base, entry.weights, load_options(args))
            else:
                pairs[key] = None  # not built: the agent's model tools say so
        pair = pairs[key]
        if pair is None:
            return None
        run = Path(args.runs_root or "") / entry.name / "adl"
        if agent == "adl" and (run / "summary.json").is_file():
            try:
                return PairAccess.from_adl_run(pair, run, max_new_tokens=args.max_new_tokens)
            except (DifflensError, OSError, KeyError):
                pass  # no saved δ̄: steering is unavailable, asking still works
        return PairAccess(pair, max_new_tokens=args.max_new_tokens)

    return factory
