"""The methods an agent can read: name → how to run (or reuse) its run and read it as Results.

One :class:`AgentMethod` per diffing method, holding only dotted references, so importing the
registry imports no method (and no torch); everything is resolved on first use.  A new method
is one entry in :data:`METHODS`: its config dataclass (the fields ``base``, ``finetuned``,
``device`` and ``dtype`` plus its own ``option(...)`` fields), the ``difflens.api`` function
that runs it (``run(config, out, pair=, progress=) -> summary``), the file that marks a finished
run, and its :class:`~difflens.agent.results.Results` adapter.  ``difflens agent`` and
``difflens eval --agents`` both read this table.

Several methods at once (:func:`combine`) give ONE ``Results``: an intro line per method, the
overviews one after another under a heading each, every detail section prefixed by its method
(``adl.logit_lens``, ``mining.topics``), and the tools the union of the methods' tools
(``generate_steered`` only when a method with a difference vector, ADL, is among them).
"""

from __future__ import annotations

import argparse
import shlex
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import Any, NoReturn

from difflens.agent.results import Results
from difflens.errors import DifflensError

BLACKBOX = "blackbox"
SECTIONS_LINE = "Sections for get_detail:"


def _resolve(ref: str) -> Any:
    module, _, attr = ref.partition(":")
    return getattr(import_module(module), attr)


@dataclass(frozen=True)
class AgentMethod:
    """One diffing method as the agent combiners see it (references resolved lazily)."""

    name: str
    """Registry name, also the run directory name (``DIR/<name>/``) and the ``--methods`` value."""
    title: str
    intro: str
    """One sentence for the agent's first prompt: what these results are."""
    config: str
    """``module:Class`` of the config dataclass (its fields are the method's CLI flags)."""
    run: str
    """``module:function`` running (or resuming) it: ``(config, out, pair=, progress=)``."""
    results: str
    """``module:function`` reading a finished run directory into :class:`Results`."""
    command: str
    """The ``difflens`` subcommand of the method (for help texts)."""
    kind: str
    """The ``run.json`` kind its runner writes."""
    summary_file: str = "summary.json"
    """Written last by the runner: its presence marks a finished run."""
    steering: bool = False
    """The run saves a difference vector: the agent gets ``generate_steered``."""

    def config_class(self) -> type:
        return _resolve(self.config)

    def make_config(self, sources: dict[str, Any], flags: str = "") -> Any:
        """The method's config for ``sources`` (base, finetuned, device, dtype) and ``flags``,
        a string of the method's own command flags (``"--n-texts 500 --skip causal"``),
        parsed and validated like ``difflens <command>`` would (one-line errors)."""
        from difflens.options import add_arguments, from_args

        cls = self.config_class()
        parser = _FlagParser(prog=f"--{self.name}-args", add_help=False,
                             usage=f"difflens {self.command} --help")
        add_arguments(parser, cls)
        try:
            words = shlex.split(flags or "")
        except ValueError as exc:
            raise DifflensError(f"--{self.name}-args: {exc}") from None
        from dataclasses import fields

        known = {f.name for f in fields(cls)}  # the weights lens has no dtype, say
        config = from_args(cls, parser.parse_args(words),
                           **{k: v for k, v in sources.items() if k in known})
        config.validate()
        return config

    def identity(self, config: Any) -> dict[str, Any]:
        """What names and reuses the run directory (as the runner's ``RunDir`` records it)."""
        return config.identity() if hasattr(config, "identity") else config.to_dict()

    def finished(self, run_dir: Path, config: Any) -> bool:
        """``run_dir`` holds a finished run made with ``config``; a run made with other
        settings raises its one-line error (before any model is loaded)."""
        from difflens.io.artifacts import same_run

        return same_run(run_dir, self.identity(config), self.kind) and \
            (run_dir / self.summary_file).is_file()

    def has_run(self, run_dir: Path) -> bool:
        """``run_dir`` holds a finished run of this method (any settings)."""
        return (Path(run_dir) / self.summary_file).is_file()

    def run_method(self, config: Any, out: Path, pair: Any, progress: bool = True) -> Any:
        return _resolve(self.run)(config, out, pair=pair, progress=progress)

    def load_results(self, run_dir: Path | str) -> Results:
        results = _resolve(self.results)(run_dir)
        if not results.intro:
            results.intro = self.intro
        return results


class _FlagParser(argparse.ArgumentParser):
    """Parses a method's flags inside a handler: mistakes are one-line DifflensErrors."""

    def error(self, message: str) -> NoReturn:  # type: ignore[override]
        raise DifflensError(f"{self.prog}: {' '.join(message.split())} (its flags: "
                            f"`{self.usage}`)")


METHODS: dict[str, AgentMethod] = {m.name: m for m in (
    AgentMethod(
        "adl", "Activation Difference Lens",
        "You are given the results of the Activation Difference Lens, which reads the average "
        "activation difference between the finetuned and the base model on unrelated text.",
        config="difflens.methods.adl.config:ADLConfig", run="difflens.api:run_adl",
        results="difflens.agent.results:adl_results", command="adl", kind="adl",
        steering=True),
    AgentMethod(
        "mining", "Diff Mining",
        "You are given the results of Diff Mining, which lists the tokens whose predictions "
        "the finetune changes most on unrelated text.",
        config="difflens.methods.mining.config:MiningConfig", run="difflens.api:run_mining",
        results="difflens.agent.results:mining_results", command="mine", kind="mining"),
    AgentMethod(
        "pca", "PCA of activation differences",
        "You are given the results of a PCA of activation differences, which lists the main "
        "directions in which the finetuned model's activations differ from the base model's "
        "on unrelated text, read out as tokens and contexts.",
        config="difflens.methods.pca.config:PCAConfig", run="difflens.api:run_pca",
        results="difflens.agent.pca_results:pca_results", command="pca", kind="pca"),
    AgentMethod(
        "kl", "Per-token KL divergence",
        "You are given the results of a per-token KL divergence between the finetuned and the "
        "base model's next-token predictions on unrelated text: the contexts and tokens where "
        "their predictions differ most.",
        config="difflens.methods.kl.config:KLConfig", run="difflens.api:run_kl",
        results="difflens.agent.kl_results:kl_results", command="kl", kind="kl"),
    AgentMethod(
        "weights", "Weight-space lens",
        "You are given the results of a weight-space lens, which reads the finetune's weight "
        "changes alone (no text): which modules changed most and the tokens their main "
        "directions point to.",
        config="difflens.methods.weights.config:WeightsConfig", run="difflens.api:run_weights",
        results="difflens.agent.weights_results:weights_results", command="weights",
        kind="weights"),
)}


def method_names() -> list[str]:
    return list(METHODS)


#: Suffix of an agent variant that also gets the ``generate_amplified`` tool (``adl+amp``).
AMPLIFIED = "+amp"


def agent_names() -> list[str]:
    """Every agent ``difflens eval`` can run: one per registered method and the black box,
    each also as its ``+amp`` variant (with the logit-difference amplification tool)."""
    plain = [*METHODS, BLACKBOX]
    return [*plain, *(f"{name}{AMPLIFIED}" for name in plain)]


def split_agent(agent: str) -> tuple[str, bool]:
    """``"adl+amp"`` → ``("adl", True)``; ``"adl"`` → ``("adl", False)``."""
    if agent.endswith(AMPLIFIED):
        return agent[: -len(AMPLIFIED)], True
    return agent, False


def get_method(name: str) -> AgentMethod:
    if name not in METHODS:
        raise DifflensError(f"unknown method {name!r}; known: {', '.join(METHODS)}")
    return METHODS[name]


def parse_methods(text: str | list[str]) -> list[str]:
    """``"adl,mining"`` (or a list) → checked, de-duplicated method names, in order."""
    items = text.split(",") if isinstance(text, str) else [p for t in text for p in t.split(",")]
    names = list(dict.fromkeys(p.strip() for p in items if p.strip()))
    if not names:
        raise DifflensError(f"--methods names no method; choose from {', '.join(METHODS)}")
    for name in names:
        get_method(name)
    return names


def combine(parts: dict[str, Results]) -> Results:
    """One :class:`Results` of several methods' results (keyed by method name).

    One method: its results unchanged.  Several: overviews under ``=== <title> (<name>) ===``
    headings, each one's own "Sections for get_detail" line replaced by one list of prefixed
    names at the end; sections ``<name>.<section>``; ``steering`` when any part steers.
    """
    if len(parts) == 1:
        return next(iter(parts.values()))
    intro = ["You are given the results of several diffing methods:"]
    overview: list[str] = []
    sections: dict[str, str] = {}
    for name, res in parts.items():
        title = METHODS[name].title if name in METHODS else name
        intro.append(f"- {res.intro or METHODS[name].intro}")
        body = [line for line in res.overview.splitlines()
                if not line.startswith(SECTIONS_LINE)]
        overview += [f"=== {title} ({name}) ===", *body, ""]
        sections.update({f"{name}.{key}": text for key, text in res.sections.items()})
    overview.append(f"{SECTIONS_LINE} {', '.join(sections)}.")
    return Results("+".join(parts), "\n".join(overview), sections, intro="\n".join(intro),
                   steering=any(r.steering for r in parts.values()))
