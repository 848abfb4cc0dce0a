"""``difflens eval``: the agent evaluation harness from the command line."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from typing import Any

from difflens.cli_args import add_model_args, load_options, model_sources
from difflens.options import (
    add_arguments,
    check_path,
    from_args,
    group,
    meta,
    option,
    validate,
)

# PCA stages the method-level evaluation does not read (it scores the logit-lens readouts).
PCA_SKIP = ("patchscope", "contexts", "steering")

EPILOG = """\
Reproducing the seed's agent table (ADL vs Diff Mining vs black-box, budgets 0/5/50) with a
real endpoint (key read from $OPENAI_API_KEY, or the variable --llm-api-key-env names; any
OpenAI-compatible server works):

  export OPENAI_API_KEY=...
  difflens eval --agents adl mining blackbox --budgets 0 5 50 --repeats 5 \\
      --llm-base-url https://api.openai.com/v1 --agent-model gpt-5 --llm-model gpt-5-mini \\
      --grade-repeats 3 --out runs/eval
  cat runs/eval/table.txt   # mean grade, grade>=2 and grade>=4 rates with 95% bootstrap CIs

Every registered organism is used unless --organisms names some.  Each gets ADL, Diff Mining,
per-token KL, PCA and weight-space runs under --runs-root (default OUT/methods:
<root>/<organism>/adl, .../mining, .../kl, .../pca, .../weights;
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
  difflens eval --offline --adl-skip steering similarity causal --mining-texts 32 \\
      --kl-texts 16 --pca-texts 128                                  # quick (README table)
"""


@dataclass
class EvalSizes:
    """The numeric ``difflens eval`` flags, with their ranges (checked before any work)."""

    budgets: list[int] = field(default_factory=lambda: [0, 5], metadata=meta(
        nargs="+", type=int, min=0, help="model-interaction budgets (default 0 5)"))
    repeats: int = option(1, min=1, help="agent runs per configuration")
    n_texts: int | None = option(None, min=1, example=1000,
                                 help="ADL reference texts per organism (default: ADL's own)")
    mining_texts: int | None = option(
        None, min=1, example=256, help="Diff Mining texts per organism (default: mining's own)")
    kl_texts: int | None = option(
        None, min=1, example=16, help="per-token KL texts per organism (default: kl's own)")
    pca_texts: int | None = option(
        None, min=1, example=128, help="PCA texts per organism (default: pca's own)")
    max_turns: int = option(20, min=1, help="agent answers per run at most")
    grade_repeats: int = option(3, min=1,
                                help="independent LLM gradings averaged per hypothesis")
    max_new_tokens: int = option(48, min=1, help="tokens per model answer")
    n_boot: int = option(2000, min=1, help="bootstrap resamples of the confidence intervals")
    seed: int = option(0, help="seed of the bootstrap")


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from difflens.cli_args import add_llm_args

    p = sub.add_parser(
        "eval", help="evaluate interpretability agents on organisms (seed 003's agent table)",
        description="Organisms × {ADL, Diff Mining, black-box} agents × interaction budgets × "
                    "repeats; hypotheses graded 1-5 against each organism's rubric; summary with "
                    "bootstrap CIs and grade>=2 / grade>=4 rates.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--organisms", nargs="*", default=[],
                   help="registry names (default: all registered organisms)")
    from difflens.agent.methods import agent_names

    p.add_argument("--agents", nargs="+", default=["adl", "mining", "blackbox"],
                   choices=agent_names(),
                   help="agents to run: one per diffing method (reading its runs under "
                        "--runs-root) and the black box (default adl mining blackbox); "
                        "NAME+amp also gets the generate_amplified tool (logit-difference "
                        "amplification), e.g. blackbox+amp")
    add_arguments(p, EvalSizes, only=("budgets", "repeats"))
    p.add_argument("--runs-root", default=None,
                   help="folder with <organism>/adl and <organism>/mining run directories "
                        "(default: OUT/methods)")
    methods = group(p, "method-level evaluation")
    methods.add_argument("--no-method-runs", dest="method_runs", action="store_false",
                         help="only read runs already under --runs-root; never start ADL / "
                              "Diff Mining")
    add_arguments(methods, EvalSizes, only=("n_texts",))
    methods.add_argument("--adl-skip", nargs="*", default=[], metavar="STAGE",
                         help="ADL stages to skip (patchscope, steering, relevance, similarity, "
                              "causal, report)")
    add_arguments(methods, EvalSizes, only=("mining_texts",))
    methods.add_argument("--no-mining", dest="mining", action="store_false",
                         help="no Diff Mining runs")
    add_arguments(methods, EvalSizes, only=("kl_texts",))
    methods.add_argument("--no-kl", dest="kl", action="store_false",
                         help="no per-token KL runs")
    add_arguments(methods, EvalSizes, only=("pca_texts",))
    methods.add_argument("--pca-skip", nargs="*", default=list(PCA_SKIP), metavar="STAGE",
                         help="PCA stages to skip (default: " + " ".join(PCA_SKIP) + ": the "
                              "evaluation scores the components' logit-lens readouts only)")
    methods.add_argument("--no-pca", dest="pca", action="store_false", help="no PCA runs")
    methods.add_argument("--no-weights", dest="weights", action="store_false",
                         help="no weight-space lens runs")
    p.add_argument("--out", default="runs/eval", help="output folder (resumes if present)")
    add_arguments(p, EvalSizes, only=("max_turns",))
    p.add_argument("--protocol", default="auto", choices=["auto", "native", "text"],
                   help="tool protocol: native tool calls, plain text, or auto (fallback on 400)")
    p.add_argument("--agent-model", default=None, help="agent model (default: --llm-model)")
    add_arguments(p, EvalSizes, only=("grade_repeats", "max_new_tokens", "n_boot", "seed"))
    add_llm_args(p)
    add_model_args(p)
    p.set_defaults(handler=run)
    return p


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from difflens.cli_args import llm_fields
    from difflens.evaluation.report import render_eval_report
    from difflens.evaluation.zoo import evaluate_zoo
    from difflens.evaluation.zoo_runs import ZooRunConfig, run_zoo
    from difflens.organisms.registry import get_organism, load_registry

    # Everything that can be checked is checked before the method-level runs (minutes per
    # organism): flags, devices, paths, the agents' settings and the endpoint itself.
    validate(from_args(EvalSizes, args))
    model_sources(args)
    load_options(args)
    check_path(args.out, "out_dir", "--out")
    registry = load_registry()
    names = list(args.organisms) or list(registry)
    for name in names:
        get_organism(name, registry)  # one-line error naming the known organisms
    runs_root = args.runs_root or str(Path(args.out) / "methods")
    check_path(runs_root, "out_dir", "--runs-root")
    agents = None
    if args.llm_base_url and (args.agent_model or args.llm_model):
        agents = _prepare_agents(args, names, runs_root)
    if args.method_runs:
        adl = {"skip": list(args.adl_skip), "device": args.device, "dtype": args.dtype,
               **({"n_texts": args.n_texts} if args.n_texts else {})}
        mining = ({"n_texts": args.mining_texts} if args.mining_texts else {}) if args.mining \
            else None
        kl = ({"n_texts": args.kl_texts} if args.kl_texts else {}) if args.kl else None
        pca = {"skip": list(args.pca_skip), **({"n_texts": args.pca_texts}
                                                if args.pca_texts else {})} if args.pca else None
        weights = {} if args.weights else None
        # Finished runs with the same settings are read back; stale ones stop with one line.
        config = ZooRunConfig(runs_root, adl, mining, llm_fields(args), kl, pca, weights)
        for note in run_zoo(registry, names, config):
            print(f"note: {note}")
    zoo = evaluate_zoo(registry, names, runs_root, args.out)
    print(zoo["table"])
    summary: list = []
    failed = 0
    if agents is not None:
        report = _run_agents(args, runs_root, *agents)
        summary = report["summary"]
        failed = sum(row.get("status") == "error" for row in report["rows"])
        total = len(report["rows"])
    else:
        print("no LLM endpoint (--llm-base-url, --llm-model): agents skipped, method-level "
              "evaluation only")
    report_path = render_eval_report(args.out, summary, zoo)
    print(f"wrote {args.out}/zoo.json, {args.out}/zoo.txt and {report_path}")
    if failed:  # the work asked for was not all done: say so, and exit non-zero
        print(f"difflens: error: {failed} of {total} agent runs failed (endpoint errors; see "
              f"{args.out}/runs); run the same command again to retry only those",
              file=sys.stderr)
        return 1
    return 0


def _prepare_agents(args: argparse.Namespace, names: list[str], runs_root: str) -> tuple:
    """The evaluation config, agent LLM and grader, built (validated) and the endpoint probed
    before any other work."""
    from difflens.evaluation.harness import EvalConfig
    from difflens.graders import LLMGrader, OfflineGrader
    from difflens.llm import LLMClient, llm_config_from_fields

    # The grader model: --llm-model, else the agent's model, else the one default of
    # llm_config_from_fields.  The caller checked that --llm-base-url is given.
    grader_llm = llm_config_from_fields({"llm_base_url": args.llm_base_url,
                                         "llm_model": args.llm_model or args.agent_model,
                                         "llm_api_key_env": args.llm_api_key_env})
    agent_llm = grader_llm.replace(model=args.agent_model or grader_llm.model)
    config = EvalConfig(out=args.out, organisms=names, agents=list(args.agents),
                        budgets=list(args.budgets), repeats=args.repeats,
                        runs_root=runs_root, max_turns=args.max_turns,
                        protocol=args.protocol, n_boot=args.n_boot, seed=args.seed)
    LLMClient(agent_llm).check_reachable()  # an unreachable endpoint: one line, now
    grader = OfflineGrader() if args.offline else LLMGrader(grader_llm,
                                                            score_repeats=args.grade_repeats)
    return config, agent_llm, grader


def _run_agents(args: argparse.Namespace, runs_root: str, config: Any, agent_llm: Any,
                grader: Any) -> dict:
    from difflens.evaluation.harness import run_eval

    args.runs_root = runs_root
    report = run_eval(config, agent_llm, grader, _access_factory(args))
    print(report["table"])
    print(f"wrote {args.out}/eval.json and {args.out}/table.txt")
    return report


def _access_factory(args: argparse.Namespace) -> Any:
    """Model access per organism: loaded on first use and shared by its agents."""
    from pathlib import Path

    from difflens.agent import PairAccess
    from difflens.agent.methods import METHODS, split_agent
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
        # A method whose run saves a difference vector (ADL) steers along it.
        method = split_agent(agent)[0]
        steers = method in METHODS and METHODS[method].steering
        run = Path(args.runs_root or "") / entry.name / method if steers else None
        return PairAccess.for_run(pair, run, max_new_tokens=args.max_new_tokens)

    return factory
