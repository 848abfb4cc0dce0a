"""Cost of one decoding step: steered vs unsteered generation, greedy and sampled, per batch size.

Builds a random-init causal LM in the process (llama or gemma3 shape, ``--layers`` /
``--hidden`` / ``--vocab``; nothing downloaded) with a byte-level BPE tokenizer trained on the
shipped chat prompts, and times :func:`difflens.models.generation.generate`:

* ``unsteered``: no steering at all;
* ``steered``: every row its own :class:`Steer` (strengths 0, 0.5, 1, ... cycling, the steering
  search's per-row batches), at the middle layer;
* ``floor``: the model's own ``generate`` (greedy, nothing of ours), the cost a step cannot go
  below without changing the model call.

Each is run greedy and sampled (per-row seeded streams) at every ``--batch`` size.  The time of
one decoding step is ``(t(T tokens) − t(1 token)) / (steps − 1)``: the prompt pass and the
call's setup cancel.  The best of ``--repeats`` runs is kept.  Printed: ms per step, the ratio
steered / unsteered (target ≤ 1.2) and the overhead per step over unsteered and over the floor,
and a fit ``F + r × rows`` of the steered sampled step over the batch sizes.

With a tiny model the model call itself costs well under a millisecond per step, so everything
around it (Python per step, per row) is what this measures; on a GPU the same holds for any
model that fits, which is why the CUDA path adds a static cache and CUDA graphs
(``docs/scaling.md``).

    python benchmarks/decode.py                       # CPU, tiny llama, batches 1 4 16 64
    python benchmarks/decode.py --batch 4 --tokens 16 --repeats 1   # smoke size
    python benchmarks/decode.py --device cuda --family gemma3 --hidden 640 --layers 18 \\
        --vocab 262144 --dtype bfloat16               # the embedded shape on a GPU
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from typing import Any

import torch
from _measure import fit_line

from difflens.data.corpus import chat_prompts
from difflens.data.padding import left_padded
from difflens.models.generation import SamplingConfig, Steer, generate
from difflens.models.pair import ModelPair

TARGET = 1.2


def bench_tokenizer() -> Any:
    """A byte-level BPE tokenizer (~600 tokens) trained on the shipped chat prompts."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(chat_prompts() * 10, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>")


def bench_model(args: argparse.Namespace, vocab: int) -> Any:
    """A random-init model of ``args.family`` (ids beyond the tokenizer decode to nothing)."""
    import transformers as tf

    heads = max(1, args.hidden // 64) if args.hidden >= 128 else 4
    common = dict(vocab_size=vocab, hidden_size=args.hidden, intermediate_size=4 * args.hidden,
                  num_hidden_layers=args.layers, num_attention_heads=heads,
                  num_key_value_heads=max(1, heads // 2), max_position_embeddings=4096,
                  bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if args.family == "gemma3":
        config = tf.Gemma3TextConfig(**common, head_dim=args.hidden // heads, sliding_window=512)
    else:
        config = tf.LlamaConfig(**common)
    torch.manual_seed(0)
    model = tf.AutoModelForCausalLM.from_config(config).to(args.device, getattr(torch, args.dtype))
    return model.eval()


def best_seconds(fn: Any, repeats: int) -> tuple[float, Any]:
    best, out = float("inf"), None
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best, out


def step_ms(run: Any, tokens: int, repeats: int) -> float:
    """Milliseconds per decoding step: ``run(n)`` returns the steps it ran for n new tokens."""
    long_s, long_steps = best_seconds(lambda: run(tokens), repeats)
    short_s, short_steps = best_seconds(lambda: run(1), repeats)
    return 1000 * (long_s - short_s) / max(1, long_steps - short_steps)


def measure(pair: ModelPair, prompts: list[str], layer: int, vector: torch.Tensor,
            tokens: int, repeats: int) -> dict[str, float]:
    steer = [Steer(vector, layer, 0.5 * (i % 5)) for i in range(len(prompts))]
    out: dict[str, float] = {}
    for mode in ("greedy", "sampled"):
        cfg = SamplingConfig(max_new_tokens=tokens, do_sample=mode == "sampled")
        for name, rows in (("unsteered", None), ("steered", steer)):
            def run(n: int, rows: Any = rows, cfg: SamplingConfig = cfg) -> int:
                return generate(pair, prompts, cfg.replace(max_new_tokens=n), rows,
                                batch_size=len(prompts)).steps
            run(2)  # warm-up: first calls pay for lazy initialisation (and CUDA graphs)
            out[f"{mode}_{name}"] = step_ms(run, tokens, repeats)
    ids, mask = left_padded(pair.tokenizer, prompts)
    model = pair.ft_model
    ids, mask = ids.to(pair.device), mask.to(pair.device)

    def floor(n: int) -> int:
        with torch.inference_mode():
            model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n,
                           min_new_tokens=n, do_sample=False, pad_token_id=0)
        return n
    floor(2)
    out["floor"] = step_ms(floor, tokens, repeats)
    return out


def fit(points: list[tuple[int, float]]) -> tuple[float, float] | None:
    """Least squares ``ms = F + r × rows``."""
    return fit_line(points)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 4, 16, 64])
    ap.add_argument("--tokens", type=int, default=48, help="new tokens per timed call")
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats (the best is kept)")
    ap.add_argument("--family", choices=("llama", "gemma3"), default="llama")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--vocab", type=int, default=0,
                    help="model vocabulary (default: the tokenizer's; 262144 = gemma's)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    tok = bench_tokenizer()
    model = bench_model(args, max(args.vocab, len(tok)))
    pair = ModelPair.from_models(model, model, tok)
    layer = args.layers // 2
    vector = torch.randn(args.hidden, generator=torch.Generator().manual_seed(0))
    texts = chat_prompts()
    rows = []
    for batch in args.batch:
        prompts = [texts[i % len(texts)] for i in range(batch)]
        ms = measure(pair, prompts, layer, vector, args.tokens, args.repeats)
        row = {"batch": batch, **{k: round(v, 3) for k, v in ms.items()}}
        for mode in ("greedy", "sampled"):
            steered, plain = ms[f"{mode}_steered"], ms[f"{mode}_unsteered"]
            row[f"{mode}_ratio"] = round(steered / plain, 3)
            row[f"{mode}_overhead_ms"] = round(steered - plain, 3)
            row[f"{mode}_over_floor_ms"] = round(steered - ms["floor"], 3)
        rows.append(row)
    cost = fit([(r["batch"], r["sampled_steered"]) for r in rows])
    report = {"machine": platform.processor() or platform.machine(), "torch": torch.__version__,
              "threads": torch.get_num_threads(), "args": vars(args), "target_ratio": TARGET,
              "rows": rows,
              "sampled_steered_fit_ms": None if cost is None else
              {"fixed": round(cost[0], 3), "per_row": round(cost[1], 4)}}
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            fh.write(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report))
    print(f"\nms per decoding step ({args.family}, {args.layers} layers, d={args.hidden}, "
          f"vocab {model.config.vocab_size}, {args.device}, {torch.get_num_threads()} threads)")
    print(" batch   floor  greedy  g.steer  ratio  sampled  s.steer  ratio  s.steer−floor")
    for r in rows:
        print(f"{r['batch']:>6}  {r['floor']:>6.3f}  {r['greedy_unsteered']:>6.3f}  "
              f"{r['greedy_steered']:>7.3f}  {r['greedy_ratio']:>5.2f}  "
              f"{r['sampled_unsteered']:>7.3f}  {r['sampled_steered']:>7.3f}  "
              f"{r['sampled_ratio']:>5.2f}  {r['sampled_over_floor_ms']:>13.3f}")
    if cost is not None:
        print(f"steered sampled step ≈ {cost[0]:.3f} ms + {cost[1]:.4f} ms × rows "
              f"(target ratio ≤ {TARGET})")


if __name__ == "__main__":
    main()
