"""Amplified generation vs plain finetuned generation of the same tokens.

Logit-diff amplification runs both models every step (two forwards, two KV caches), so its
floor is 2× plain finetuned generation; the target is ≤ 2.3×.  Both runs decode at most
``--tokens`` new tokens for each of ``--prompts`` neutral chat prompts in one batch, on the
embedded pair (gemma-3-270m + the shipped cake_bake LoRA organism, one weight copy) unless
``--base`` / ``--finetuned`` say otherwise.  Plain generation is
:func:`difflens.models.generation.generate` (transformers' ``generate``); amplified is
:func:`difflens.models.amplify.generate_amplified` at ``--alpha`` (2).  The ratio compares
seconds per token slot (rows × decoding steps computed), since the two runs may stop at
different steps when every row has ended.

    python benchmarks/amplify.py --prompts 8 --tokens 32 --out bench.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from difflens.data.chat import chat_prompt
from difflens.data.corpus import chat_prompts
from difflens.models.amplify import generate_amplified
from difflens.models.generation import SamplingConfig, generate
from difflens.models.loading import LoadOptions
from difflens.models.pair import ModelPair

FLOOR, TARGET = 2.0, 2.3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=16, help="rows per batch (default 16)")
    ap.add_argument("--tokens", type=int, default=48, help="new tokens per row (default 48)")
    ap.add_argument("--alpha", type=float, default=2.0)
    ap.add_argument("--repeats", type=int, default=1, help="timed repeats (the best is kept)")
    ap.add_argument("--base", default=None)
    ap.add_argument("--finetuned", default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    args = ap.parse_args()
    pair = ModelPair.load(args.base, args.finetuned,
                          LoadOptions(device=args.device, dtype=args.dtype))
    texts = (chat_prompts() * (args.prompts // 40 + 1))[: args.prompts]
    prompts = [chat_prompt(pair.tokenizer, t) for t in texts]
    sampling = SamplingConfig(max_new_tokens=args.tokens)
    # Warm-up: first calls pay for allocations and lazy initialisation.
    generate(pair, prompts[:2], sampling.replace(max_new_tokens=2))
    generate_amplified(pair, prompts[:2], args.alpha, sampling.replace(max_new_tokens=2))
    plain_s, amp_s = [], []
    plain_slots = amp_slots = 0
    for _ in range(args.repeats):
        start = time.perf_counter()
        plain = generate(pair, prompts, sampling)
        plain_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        amped = generate_amplified(pair, prompts, args.alpha, sampling, batch_size=len(prompts))
        amp_s.append(time.perf_counter() - start)
        plain_slots, amp_slots = plain.token_slots, amped.token_slots
    # Per computed token slot (rows × steps): both loops stop when every row has ended, which
    # can happen at different steps, so the ratio compares the cost of the same work.
    plain_rate = min(plain_s) / max(plain_slots, 1)
    amp_rate = min(amp_s) / max(amp_slots, 1)
    ratio = amp_rate / plain_rate
    figures = {
        "machine": platform.platform(), "threads": torch.get_num_threads(),
        "device": str(pair.device), "pair": [pair.base_id, pair.ft_id], "adapter": pair.adapter,
        "prompts": args.prompts, "tokens": args.tokens, "alpha": args.alpha,
        "plain_seconds": round(min(plain_s), 3), "plain_token_slots": plain_slots,
        "amplified_seconds": round(min(amp_s), 3), "amplified_token_slots": amp_slots,
        "plain_ms_per_slot": round(1000 * plain_rate, 3),
        "amplified_ms_per_slot": round(1000 * amp_rate, 3),
        "ratio": round(ratio, 3), "floor": FLOOR, "target": TARGET,
        "meets_target": ratio <= TARGET,
    }
    print(json.dumps(figures, indent=1))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(figures, f, indent=1)


if __name__ == "__main__":
    main()
