"""Steering-search cost: batched look-ahead bisection vs sequential bisection, same decisions.

Runs the ADL steering search on the embedded pair (gemma-3-270m + the shipped cake_bake
organism) once sequentially (one strength per generate call) and once per look-ahead depth
(2^depth − 1 strengths per call), checks that every variant made the same decisions, and
reports generated tokens, token slots (rows × decoding steps actually computed), generation and
grading time per variant, and the speed-up over sequential.

It also fits the cost of one decoding step, ``F + r × rows``, to every generate call it made,
and prints what look-ahead can give on this machine: with ``D`` decisions on ``P`` prompts the
sequential search costs ``D (F + P r)`` per token and look-ahead ``d`` costs
``Σ_rounds (F + (2^depth − 1) P r)``.  The ratio only approaches ``D / rounds`` when a row is
nearly free (``r ≪ F``, a GPU); with ``d = 2`` it stays below 2 whenever rows cost anything, and
``d = 3`` reaches 2 only when ``F / r ≥ 11 P`` (88 for 8 prompts; ``D`` a multiple of 3, e.g.
the GPU search's 6) — measured on the 2-core CPU: F ≈ 0.16-0.17 s, r ≈ 10-14 ms, F / r ≈ 11-17.

Fallbacks, stated in the output: without the shipped organism the base is paired with itself
and the vector is the unembedding row of " cake" (δ̄ would be zero); without the bundled
reference corpus δ̄ is read from the shipped chat prompts; without the offline grader (MiniLM
package) coherence is a repetition rule defined here.

    python benchmarks/steering_search.py --out bench.json     # ADL's CPU/GPU search settings
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from typing import Any

import torch
from _measure import fit_line

from difflens.data.corpus import chat_prompts, load_texts
from difflens.errors import DifflensError
from difflens.methods.adl.collect_stage import collect
from difflens.models.device import is_gpu
from difflens.models.generation import SamplingConfig
from difflens.models.loading import EMBEDDED, LoadOptions, load_causal_lm
from difflens.models.pair import ModelPair
from difflens.models.patchscope import unit_scaled
from difflens.models.perplexity import base_perplexity
from difflens.models.steering import SteeringConfig, search_strength

# A fixed late layer: the benchmark times the search, not ADL's layer choice.
BENCH_DEPTH = 0.8


class RepetitionGrader:
    """Fallback coherence: incoherent when under half of the word trigrams are distinct or a
    word fills over 40% of the sample."""

    def coherent(self, samples: list[str]) -> list[bool]:
        out = []
        for text in samples:
            words = text.lower().split()
            if len(words) < 4:
                out.append(bool(words))
                continue
            tri = list(zip(words, words[1:], words[2:], strict=False))
            top = max(words.count(w) for w in set(words)) / len(words)
            out.append(len(set(tri)) / len(tri) >= 0.5 and top <= 0.4)
        return out

    def describe(self) -> dict[str, Any]:
        return {"backend": "benchmark repetition rule (distinct-3 >= 0.5, top word <= 40%)"}



def load_pair(notes: list[str], base: str | None = None, device: str = "cpu",
              dtype: str = "float32") -> ModelPair:
    options = LoadOptions(device=device, dtype=dtype)
    if base is not None:  # e.g. a random-init model of the embedded shape on a GPU machine
        notes.append(f"{base} paired with itself")
        model, tokenizer = load_causal_lm(base, options)
        return ModelPair.from_models(model, model, tokenizer)
    try:
        return ModelPair.load(options=options)
    except (DifflensError, OSError) as exc:
        notes.append(f"shipped organism unavailable ({exc}); the base is paired with itself")
        model, tokenizer = load_causal_lm(EMBEDDED, options)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        return ModelPair.from_models(model, model, tokenizer)


def steering_vector(pair: ModelPair, layer: int, n_texts: int, notes: list[str]):
    """(raw vector, ν_ft) at ``layer``: δ̄ over positions 1..4 of ``n_texts`` unrelated texts."""
    try:
        texts = load_texts("reference", limit=n_texts)
    except DifflensError as exc:
        notes.append(f"reference corpus unavailable ({exc}); δ̄ read from the chat prompts")
        texts = chat_prompts()
    diff = collect(pair, texts, [layer], k=5, batch_size=32, progress=False)
    vector, norm_ft = diff.vector(layer), diff.norms["ft"][layer]
    ratio = float(vector.norm()) / norm_ft
    notes.append(f"δ̄ from {diff.stats.count} texts; ‖δ̄‖/ν_ft = {ratio:.4f}")
    if float(vector.norm()) == 0.0:
        token = pair.tokenizer(" cake", add_special_tokens=False).input_ids[-1]
        vector = pair.arch("ft").unembed.weight[token].detach().float().clone()
        notes.append("δ̄ is zero (identical models): steering with the unembedding row of ' cake'")
    return vector, norm_ft


def make_grader(pair: ModelPair, notes: list[str]) -> Any:
    try:
        from difflens.graders.factory import make_grader as factory

        return factory(None, base_perplexity(pair))
    except Exception as exc:  # missing MiniLM package or grader module: use the local rule
        notes.append(f"offline grader unavailable ({type(exc).__name__}: {exc}); repetition rule")
        return RepetitionGrader()


def run_variant(pair, v, layer, grader, prompts, config, lookahead) -> dict[str, Any]:
    start = time.perf_counter()
    result, probe = search_strength(pair, v, layer, grader, prompts, config, lookahead)
    return {
        "lookahead": lookahead,
        "alpha": result.alpha,
        "found": result.found,
        "decisions": result.decisions,
        "rounds": result.rounds,
        "strengths_tried": len(result.probes),
        "generated_tokens": probe.generated_tokens,
        "token_slots": probe.token_slots,
        "generate_seconds": round(probe.generate_seconds, 2),
        "grade_seconds": round(probe.grade_seconds, 2),
        "wall_seconds": round(time.perf_counter() - start, 2),
        "batches": [{k: b[k] for k in ("alphas", "rows", "token_slots", "seconds")}
                    for b in probe.log],
        "probes": [(p.alpha, p.coherent_fraction) for p in result.probes],
    }


def fit_step_cost(batches: list[dict[str, Any]]) -> tuple[float, float] | None:
    """Least-squares ``seconds / steps = F + r × rows`` over generate calls (needs two row
    counts).  Returns ``(F, r)`` in seconds."""
    points = [(b["rows"], b["seconds"] / (b["token_slots"] / b["rows"]))
              for b in batches if b["token_slots"]]
    return fit_line(points)


def predicted_speedup(fixed: float, per_row: float, decisions: int, lookahead: int,
                      prompts: int) -> tuple[float, float]:
    """(predicted speed-up over sequential at this step cost, the bound with free rows)."""
    sequential = decisions * (fixed + prompts * per_row)
    batched, left, rounds = 0.0, decisions, 0
    while left > 0:
        depth = min(lookahead, left)
        batched += fixed + (2 ** depth - 1) * prompts * per_row
        left, rounds = left - depth, rounds + 1
    return sequential / batched, decisions / rounds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=None,
                        help="search prompts (default: ADL's, 8)")
    parser.add_argument("--final-prompts", type=int, default=20,
                        help="unsteered rows carried by the first batch")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--alpha-max", type=float, default=2.0)
    parser.add_argument("--tolerance", type=float, default=None,
                        help="bracket width (default: ADL's, 0.125 on CPU and 0.05 on GPU)")
    parser.add_argument("--lookahead", type=int, nargs="+", default=[2, 3])
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's, as in `difflens adl`)")
    parser.add_argument("--texts", type=int, default=200, help="texts for δ̄")
    parser.add_argument("--out", default=None, help="write the JSON report here")
    parser.add_argument("--base", default=None,
                        help="a model directory paired with itself (default: the embedded pair)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", default="float32", help="float32 or bfloat16")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    notes: list[str] = []
    t0 = time.perf_counter()
    pair = load_pair(notes, args.base, args.device, args.dtype)
    # (ADL's own choice needs every layer collected; on the embedded organisms it is 15 of 18.)
    layer = pair.arch("ft").resolve_layer(BENCH_DEPTH)
    vector, norm_ft = steering_vector(pair, layer, args.texts, notes)
    grader = make_grader(pair, notes)
    setup = time.perf_counter() - t0

    from difflens.data.chat import chat_prompt

    prompts = [chat_prompt(pair.tokenizer, p) for p in chat_prompts()]
    gpu = is_gpu(pair.device)
    config = SteeringConfig(
        alpha_max=args.alpha_max,
        tolerance=args.tolerance or (0.05 if gpu else 0.125),
        search_prompts=args.prompts or 8,
        final_prompts=args.final_prompts,
        sampling=SamplingConfig(max_new_tokens=args.new_tokens),
    )
    v = unit_scaled(vector, norm_ft)
    variants = [run_variant(pair, v, layer, grader, prompts, config, 1)]
    for depth in args.lookahead:
        variants.append(run_variant(pair, v, layer, grader, prompts, config, depth))
    seq = variants[0]
    for var in variants[1:]:
        var["same_decisions"] = var["decisions"] == seq["decisions"]
        var["speedup_generate"] = round(seq["generate_seconds"] / var["generate_seconds"], 2)
        var["speedup_wall"] = round(seq["wall_seconds"] / var["wall_seconds"], 2)
        var["token_slots_ratio"] = round(var["token_slots"] / seq["token_slots"], 2)
    cost = fit_step_cost([b for var in variants for b in var["batches"]])
    model = None
    if cost is not None:
        fixed, per_row = cost
        model = {"fixed_seconds_per_step": round(fixed, 4),
                 "seconds_per_row_step": round(per_row, 5),
                 "fixed_over_row": round(fixed / per_row, 1) if per_row > 0 else None,
                 "predicted": {}}
        for depth in args.lookahead:
            ratio, bound = predicted_speedup(fixed, per_row, config.steps, depth,
                                             config.search_prompts)
            model["predicted"][depth] = {"speedup": round(ratio, 2), "free_rows": round(bound, 2)}
    report = {
        "pair": {"base": pair.base_id, "finetuned": pair.ft_id}, "layer": layer,
        "norm_ft": norm_ft, "notes": notes, "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "grader": getattr(grader, "describe", lambda: {})(),
        "config": config.to_dict(), "setup_seconds": round(setup, 1), "variants": variants,
        "step_cost": model,
    }
    text = json.dumps(report, indent=2, ensure_ascii=False)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")
    print(text)
    print("\nlookahead  rounds  tried  tokens  slots  gen_s  grade_s  wall_s  speedup  same")
    for var in variants:
        print(f"{var['lookahead']:>9}  {var['rounds']:>6}  {var['strengths_tried']:>5}  "
              f"{var['generated_tokens']:>6}  {var['token_slots']:>5}  "
              f"{var['generate_seconds']:>5}  {var['grade_seconds']:>7}  "
              f"{var['wall_seconds']:>6}  {var.get('speedup_wall', 1.0):>7}  "
              f"{var.get('same_decisions', True)}")
    if model is not None:
        print(f"\ndecode step ≈ {model['fixed_seconds_per_step'] * 1000:.0f} ms + "
              f"{model['seconds_per_row_step'] * 1000:.1f} ms × rows "
              f"(F/r = {model['fixed_over_row']}; fitted to every generate call above)")
        for depth, pred in model["predicted"].items():
            print(f"look-ahead {depth}: predicted {pred['speedup']}× at this cost, "
                  f"{pred['free_rows']}× if rows were free ({config.steps} decisions)")


if __name__ == "__main__":
    main()
