"""How the agent reaches the models: an injectable object with ``ask`` and ``steer``.

The agent only needs two verbs, so tests and other backends can supply any object with these
methods (a tiny random-init pair in tests; a remote server elsewhere).  :class:`PairAccess`
implements them on a :class:`~difflens.models.pair.ModelPair` with greedy generation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from difflens.errors import DifflensError

SIDES = {"finetuned": "ft", "base": "base"}
AMPLIFY_MAX = 100.0  # the largest amplification the tool accepts (as `difflens amplify`)


class ModelAccess(Protocol):
    """What the agent's model tools call."""

    def ask(self, question: str, side: str) -> str:
        """Greedy chat answer of ``side`` ("finetuned" or "base") to ``question``."""

    def steer(self, prompt: str, strength: float) -> str:
        """Greedy chat answer of the finetuned model with the difference vector added."""

    def amplify(self, prompt: str, alpha: float) -> str:
        """Greedy chat answer from the logits ``(1+alpha)·z_ft − alpha·z_base``."""


class PairAccess:
    """:class:`ModelAccess` over a loaded pair; torch is imported only when used.

    ``vector`` (δ̄ at ``layer``) is rescaled to ``norm`` (ν_ft, a typical activation norm), so
    ``strength`` is in the same units as ADL's steering α.  Without a vector ``steer`` raises
    :class:`DifflensError`, which the agent sees as a tool error.
    """

    def __init__(self, pair: Any, vector: Any = None, layer: int | None = None,
                 norm: float | None = None, max_new_tokens: int = 48) -> None:
        self.pair = pair
        self.vector = vector
        self.layer = layer
        self.norm = norm
        self.max_new_tokens = max_new_tokens

    @classmethod
    def from_adl_run(cls, pair: Any, run_dir: Path | str, **kw: Any) -> PairAccess:
        """Steering vector, layer and ν_ft from an ADL run directory (``collect`` artifacts)."""
        from difflens.methods.adl.result import ADLResult

        result = ADLResult.load(run_dir, partial=True)  # the summary's layer and δ̄ suffice
        layer = result.layer
        diff = result.difference()
        return cls(pair, diff.vector(layer), layer, diff.norms["ft"][layer], **kw)

    @classmethod
    def for_run(cls, pair: Any, steering_run: Path | str | None = None,
                max_new_tokens: int = 48) -> PairAccess:
        """Access over ``pair``, steering along the difference vector of ``steering_run`` (an
        ADL run directory) when it holds one; otherwise (no run, no saved δ̄) asking only, and
        ``generate_steered`` answers that steering is unavailable."""
        if steering_run is not None and (Path(steering_run) / "summary.json").is_file():
            try:
                return cls.from_adl_run(pair, steering_run, max_new_tokens=max_new_tokens)
            except (DifflensError, OSError, KeyError):
                pass  # no saved δ̄: steering is unavailable, asking still works
        return cls(pair, max_new_tokens=max_new_tokens)

    def ask(self, question: str, side: str) -> str:
        if side not in SIDES:
            raise DifflensError(f"model must be 'finetuned' or 'base', not {side!r}")
        return self._generate(question, SIDES[side], None)

    def steer(self, prompt: str, strength: float) -> str:
        if self.vector is None or self.layer is None:
            raise DifflensError("steering is unavailable: this run saved no difference vector")
        vec = self.vector.float()
        scale = float(strength) * float(self.norm or 1.0) / max(float(vec.norm()), 1e-12)
        return self._generate(prompt, "ft", vec * scale)

    def amplify(self, prompt: str, alpha: float) -> str:
        """Logit-difference amplification (:mod:`difflens.models.amplify`), greedy: both
        models step together, each with its own KV cache."""
        import math

        if not math.isfinite(alpha) or not -1.0 <= alpha <= AMPLIFY_MAX:
            raise DifflensError(f"alpha must be a number from -1 to {AMPLIFY_MAX:g}, "
                                f"not {alpha!r}")
        from difflens.data.chat import chat_prompt
        from difflens.models.amplify import generate_amplified
        from difflens.models.generation import SamplingConfig

        sampling = SamplingConfig(max_new_tokens=self.max_new_tokens, do_sample=False)
        gens = generate_amplified(self.pair, [chat_prompt(self.pair.tokenizer, prompt)],
                                  [float(alpha)], sampling)
        return gens.texts[0].strip()

    def _generate(self, text: str, side: str, vector: Any) -> str:
        import contextlib

        import torch

        from difflens.data.chat import chat_prompt
        from difflens.data.padding import pad_id
        from difflens.models.hooks import add_vector

        tok = self.pair.tokenizer
        prompt = chat_prompt(tok, text)
        # The chat template already holds BOS: do not let the tokenizer add a second one.
        enc = tok(prompt, return_tensors="pt", add_special_tokens=False).to(self.pair.device)
        with self.pair.use(side) as (model, arch):
            ctx = add_vector(arch, self.layer, vector) if vector is not None \
                else contextlib.nullcontext()
            with ctx, torch.no_grad():
                out = model.generate(**enc, max_new_tokens=self.max_new_tokens, do_sample=False,
                                     pad_token_id=pad_id(tok))
        return tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()
